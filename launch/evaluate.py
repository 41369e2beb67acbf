"""`areal eval MODEL_OR_CHECKPOINT [overrides]`: the held-out evaluation of a run, without training.

The target is a Hugging Face model folder, a run's checkpoint (``RUN/checkpoints/step-N``), or a run directory
(its newest complete checkpoint). A checkpoint or run is evaluated with that run's own config (its task, its
held-out sets, its rewards), overrides on top; a plain folder with the config the overrides compose. One
rollout actor runs on an embedded Ray (vLLM, on the CPU too), exactly as in training: every held-out set's
greedy accuracy, pass@k and mean@k with ``task.eval_k``, lengths and truncation, and each set's generations
in OUT/generations/<set>/step-N.jsonl; the metrics go to OUT/metrics.json.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from actors.milestones import MILESTONE
from areal.config import TrainConfig

log = logging.getLogger("areal")


def find_target(target: str) -> tuple[str, Path | None, int]:
    """(model folder, the run's config.yaml or None, the checkpoint's step or 0) of ``target``."""
    from learners.checkpoint import MANIFEST, CheckpointStore

    path = Path(target)
    if target == "smollm2" or (path / "config.json").exists():
        return target, None, 0
    if (path / MANIFEST).exists():
        step_dir, manifest = path, CheckpointStore.verify(str(path))
    elif (path / "checkpoints").is_dir():
        found = CheckpointStore(path / "checkpoints", keep_last=1 << 30).latest_valid()
        if found is None:
            raise FileNotFoundError(f"areal eval: {target} holds no complete checkpoint (checkpoints/step-*)")
        step_dir, manifest = Path(found[0]), found[1]
    else:
        raise FileNotFoundError(f"areal eval: {target} is not a model folder (no config.json), a checkpoint "
                                "(no manifest.json) or a run directory (no checkpoints/)")
    run_config = step_dir.parent.parent / "config.yaml"
    return str(step_dir / "model"), run_config if run_config.exists() else None, int(manifest["step"])


def eval_config(target: str, overrides: list[str]) -> tuple[TrainConfig, str, int]:
    """(config, resolved YAML, step) for evaluating ``target``: its run's config when it has one."""
    from launch.preflight import check_local, validate

    model, run_config, step = find_target(target)
    extra = [f"model_path={model}", "checkpoint.resume=false", "checkpoint.resume_from="]
    if not any(o.split("=", 1)[0].lstrip("+") == "out_dir" for o in overrides):
        extra.append(f"out_dir=runs/eval-{time.strftime('%Y%m%d-%H%M%S')}")
    if run_config is not None:  # the trained model stands in for the run's own model
        extra.append("learner.lora.rank=0")
    cfg, resolved = validate([*overrides, *extra], base=run_config, local=False)
    check_local(cfg)
    return cfg, resolved, step


def evaluate(cfg: TrainConfig, step: int = 0) -> dict[str, float]:
    """Every held-out set of ``cfg`` under the model at ``cfg.model_path``; writes OUT/metrics.json and the
    generations; returns the metrics (eval/...). The engine runs in a rollout actor on an embedded Ray, as in
    training (its output goes to the worker logs, RUN_DIR/logs/ray)."""
    import ray

    from actors.rollout_actor import RolloutActor, rollout_env
    from areal.evaluation import describe_set, record_set
    from launch.train import init_ray, resolve_model
    from rollouts.tasks.factory import make_task

    out = Path(cfg.out_dir)
    model_path = resolve_model(cfg)
    task = make_task(cfg, model_path)
    plan = cfg.task.eval_plan()
    threshold = None if cfg.is_diffusion else cfg.task.correct_threshold
    metrics: dict[str, float] = {}
    started_ray = init_ray(cfg)
    actor = None
    try:
        use_gpu = bool(cfg.rollout.num_gpus)
        actor = RolloutActor.options(num_cpus=cfg.rollout.num_cpus, num_gpus=cfg.rollout.num_gpus,
                                     runtime_env={"env_vars": rollout_env(cfg, use_gpu)}).remote(cfg, model_path, 0)
        ray.get(actor.ready.remote(), timeout=cfg.rollout.start_timeout_s)
        for name, samples in task.eval_sets.items():
            began = time.monotonic()
            records = ray.get(actor.evaluate.remote(list(samples), name, plan.get(name, 0)),
                              timeout=cfg.rollout.generate_timeout_s)
            found = record_set(name, records, threshold, plan.get(name, 0), step, out)
            metrics.update(found)
            log.info("%s (%d prompts, %.0fs)", describe_set(name, found, plan.get(name, 0)), len(records),
                     time.monotonic() - began, extra=MILESTONE)
    finally:
        if actor is not None:
            try:
                ray.get(actor.close.remote(), timeout=60)
            except ray.exceptions.RayError:
                pass  # it is killed with Ray next
        if started_ray:
            ray.shutdown()
    (out / "metrics.json").write_text(json.dumps({"model": model_path, "step": step, **metrics}, indent=2))
    return metrics
