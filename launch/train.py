"""`areal train`: compose the config, bring up Ray, run the driver, print the summary."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from areal.config import TrainConfig

log = logging.getLogger("areal")


def cpus_needed(cfg: TrainConfig) -> float:
    """CPUs for the learners and the most rollout workers the balancer may run (the resource budget)."""
    return cfg.rollout.worker_budget[1] * cfg.rollout.num_cpus + cfg.learner.workers * cfg.learner.num_cpus


def init_ray(cfg: TrainConfig) -> bool:
    """Join ``cluster.address`` or start an embedded Ray whose dashboard binds to loopback.

    Returns whether this call started Ray (a caller that already runs Ray, such as a
    test session, keeps it).
    """
    import ray

    if ray.is_initialized():
        return False
    if cfg.cluster.address:
        ray.init(address=cfg.cluster.address, log_to_driver=True)
        return True
    # Oversubscribing logical CPUs is fine on a small machine: actors mostly wait on each other.
    num_cpus = cfg.cluster.num_cpus or max(os.cpu_count() or 1, int(cpus_needed(cfg) + 0.999))
    context = ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host=cfg.cluster.dashboard_host,
                       log_to_driver=True)
    url = getattr(context, "dashboard_url", "") or ""
    if url:
        log.info("Ray dashboard: http://%s", url)
    return True


def resolve_model(cfg: TrainConfig) -> str:
    """``model_path``, or the cached tiny demo model (bootstrapped on first use)."""
    marker = "model_index.json" if cfg.is_diffusion else "config.json"
    if cfg.model_path:
        if not Path(cfg.model_path, marker).exists():
            kind = "diffusers pipeline" if cfg.is_diffusion else "Hugging Face model"
            raise FileNotFoundError(f"model_path = {cfg.model_path!r} has no {marker}; give a {kind} directory, "
                                    "or leave model_path empty for the tiny demo model")
        return cfg.model_path
    if cfg.is_diffusion:
        from launch.diffusion_bootstrap import bootstrap_diffusion, diffusion_model_dir

        return str(bootstrap_diffusion(diffusion_model_dir(cfg.seed, 32), seed=cfg.seed))
    # the bootstrap trains on the task's own train split: same seed, so the held-out split stays unseen
    return str(demo_model(cfg.task.seed))


def demo_model_dir(seed: int) -> Path:
    """Where the tiny demo model is cached: $AREAL_CACHE or ~/.cache/areal."""
    root = Path(os.environ.get("AREAL_CACHE", Path.home() / ".cache" / "areal"))
    return root / f"tiny-arith-seed{seed}-newline"


def demo_model(seed: int = 0, out_dir: str | Path | None = None) -> Path:
    """The tiny demo model, bootstrapped on first use and cached.

    Its warm start ends each answer with a newline before EOS. Measured on the same code: GRPO
    lifts this warm start from 0.46 to 0.6+ held-out accuracy within 30 steps, while the warm
    start that ends answers with EOS directly (0.305) gained only 3.5 points in 100 steps.
    """
    from launch.bootstrap import bootstrap_model

    return bootstrap_model(out_dir or demo_model_dir(seed), seed=seed, answer_suffix="\n")


def find_resume_checkpoint(cfg: TrainConfig) -> tuple[Path, dict] | None:
    """The checkpoint to continue from: ``checkpoint.resume_from`` (a step-* directory, or a run directory
    whose newest good checkpoint is taken), else with ``checkpoint.resume`` the newest good one under
    out_dir; None to start fresh."""
    from learners.checkpoint import MANIFEST, CheckpointError, CheckpointStore

    source = cfg.checkpoint.resume_from
    if source:
        if Path(source, MANIFEST).exists():
            found = Path(source), CheckpointStore.verify(source)
        else:
            found = CheckpointStore(Path(source) / "checkpoints", cfg.checkpoint.keep_last).latest_valid()
            if found is None:
                raise CheckpointError(f"checkpoint.resume_from = {source!r}: no complete checkpoint in "
                                      f"{source}/checkpoints; point it at a run directory or a step-* directory")
    elif cfg.checkpoint.resume:
        found = CheckpointStore(Path(cfg.out_dir) / "checkpoints", cfg.checkpoint.keep_last).latest_valid()
        if found is None:
            log.warning("checkpoint.resume: no complete checkpoint under %s/checkpoints; starting fresh",
                        cfg.out_dir)
            return None
    else:
        return None
    path, manifest = found
    if manifest["learner_workers"] != cfg.learner.workers:
        raise CheckpointError(f"{path} was saved by {manifest['learner_workers']} learners; set "
                              f"learner.workers={manifest['learner_workers']} to resume it")
    return found


def make_batcher(cfg: TrainConfig, model_path: str):
    """Token batches with the configured advantage for text; chain batches with DDPO's per-prompt
    normalisation for diffusion."""
    from areal.batching import ChainBatcher, TokenBatcher

    if cfg.is_diffusion:
        from areal.algos.ddpo import PerPromptStatTracker

        d = cfg.diffusion
        return ChainBatcher(PerPromptStatTracker(d.stat_buffer_size, d.stat_min_count) if d.per_prompt_stats else None)
    from transformers import AutoTokenizer

    return TokenBatcher(cfg.algo.advantage, AutoTokenizer.from_pretrained(model_path).pad_token_id or 0)


def train(cfg: TrainConfig, resolved_yaml: str) -> dict:
    """Run one job to completion; returns its summary (also written to RUN_DIR/summary.json)."""
    import ray
    import torch

    from actors.driver import Driver
    from launch.sinks import make_sinks
    from rollouts.tasks.factory import make_task

    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(resolved_yaml)
    model_path = resolve_model(cfg)
    batcher = make_batcher(cfg, model_path)
    task = make_task(cfg.task, model_path)
    resume = find_resume_checkpoint(cfg)
    started_ray = init_ray(cfg)
    driver = None
    sinks = make_sinks(cfg, out_dir)
    try:
        driver = Driver(cfg, model_path, task, batcher, sinks, use_gpu=torch.cuda.is_available(), resume=resume)
        summary = driver.run()
    finally:
        if driver is not None:
            driver.shutdown()
        else:
            for sink in sinks:
                sink.close()
        if started_ray:
            ray.shutdown()
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
