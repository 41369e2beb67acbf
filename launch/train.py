"""`areal train`: compose the config, bring up Ray, run the driver, print the summary."""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

from areal.config import TrainConfig

log = logging.getLogger("areal")


def _start_up_errors() -> tuple[type[BaseException], ...]:
    from learners.checkpoint import CheckpointError
    from rollouts.data.columns import DatasetRowError
    from rollouts.data.sources import DatasetSourceError
    from rollouts.rewards.suite import RewardConfigError

    return CheckpointError, DatasetRowError, DatasetSourceError, RewardConfigError, FileNotFoundError


def cpus_needed(cfg: TrainConfig) -> float:
    """CPUs for the learners and the most rollout workers the balancer may run (the resource budget)."""
    return cfg.rollout.worker_budget[1] * cfg.rollout.num_cpus + cfg.learner.workers * cfg.learner.num_cpus


@contextmanager
def keep_signal_handlers():
    """Keep the run's SIGTERM handler while ``ray.init`` runs: Ray installs its own there, which exits with
    ``SystemExit`` wherever the main thread is (seen: inside the logging module's lock release, which then
    deadlocked the process) and leaves the Ray processes it started running."""
    try:
        import ray._private.utils as ray_utils
    except ImportError:
        yield
        return
    with mock.patch.object(ray_utils, "set_sigterm_handler", lambda handler: None):
        yield


def init_ray(cfg: TrainConfig) -> bool:
    """Join ``cluster.address`` or start an embedded Ray whose dashboard binds to loopback.

    Returns whether this call started Ray (a caller that already runs Ray, such as a
    test session, keeps it).
    """
    import ray

    if ray.is_initialized():
        return False
    from launch.console import announce_ray
    from launch.interrupts import stop_on_signals

    # quiet console: workers' output stays in Ray's worker log files (announce_ray says where)
    try:
        with keep_signal_handlers():
            if cfg.cluster.address:
                context = ray.init(address=cfg.cluster.address, log_to_driver=cfg.logging.verbose)
            else:
                # Oversubscribing logical CPUs is fine on a small machine: actors mostly wait on each other.
                num_cpus = cfg.cluster.num_cpus or max(os.cpu_count() or 1, int(cpus_needed(cfg) + 0.999))
                context = ray.init(num_cpus=num_cpus, include_dashboard=True,
                                   dashboard_host=cfg.cluster.dashboard_host, log_to_driver=cfg.logging.verbose)
    except KeyboardInterrupt:
        ray.shutdown()  # the processes it had started would outlive this one
        raise
    finally:
        stop_on_signals()
    announce_ray(context, Path(cfg.out_dir))
    return True


def resolve_model(cfg: TrainConfig) -> str:
    """``model_path``, the packaged SmolLM2 (``smollm2``) or the cached tiny demo model (both converted or
    bootstrapped on first use)."""
    if cfg.model_path == "smollm2":
        from launch.smollm2 import bootstrap_smollm2

        return str(bootstrap_smollm2())
    if cfg.model_path:
        from launch.preflight import check_model_path

        check_model_path(cfg)
        return cfg.model_path
    if cfg.is_diffusion:
        from launch.diffusion_bootstrap import bootstrap_diffusion, diffusion_model_dir

        return str(bootstrap_diffusion(diffusion_model_dir(cfg.seed, 32), seed=cfg.seed))
    if cfg.env.type == "tools":
        return str(calculator_demo_model(cfg))
    if cfg.task.type == "skip_count":
        return str(skip_count_demo_model(cfg))
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


CALCULATOR_WARM_START = dict(target_accuracy=0.3, max_steps=3000, eval_every=10)


def arithmetic_kwargs(cfg: TrainConfig) -> dict:
    """The arithmetic problem space of ``task.*`` as ``ArithmeticTask`` keywords (what a warm start trains on)."""
    t = cfg.task
    return dict(operators=tuple(t.operators), min_operand=t.min_operand, max_operand=t.max_operand,
                min_operand_b=None if t.min_operand_b < 0 else t.min_operand_b,
                max_operand_b=None if t.max_operand_b < 0 else t.max_operand_b)


def calculator_demo_model(cfg: TrainConfig) -> Path:
    """The tiny model warm-started on calculator transcripts of the run's arithmetic task (``[calculator a*b]``,
    the result, the answer) until its greedy episodes score ``CALCULATOR_WARM_START``'s target: partly, leaving
    RL headroom. Cached per problem space and seed."""
    from launch.bootstrap import bootstrap_model

    t = cfg.task
    kwargs = arithmetic_kwargs(cfg)
    names = {"+": "add", "-": "sub", "*": "mul"}
    space = "-".join([*(names[op] for op in t.operators),
                      *(str(v) for v in (t.min_operand, t.max_operand, t.min_operand_b, t.max_operand_b))])
    root = demo_model_dir(t.seed).parent
    return bootstrap_model(root / f"tiny-calculator-{space}-seed{t.seed}", seed=t.seed, task_kwargs=kwargs,
                           transcript="calculator", **CALCULATOR_WARM_START)


# Measured (seed 0, one thread): held-out 0.16 at step 150 (~6 min), then 0.12-0.22 up to step 550 at the warm
# start's constant learning rate: a longer warm start buys nothing, and a low start leaves RL the long answers.
SKIP_COUNT_WARM_START = dict(target_accuracy=0.15, max_steps=6000, eval_every=50, length_buckets=8)


def skip_count_demo_model(cfg: TrainConfig, out_dir: str | Path | None = None) -> Path:
    """The tiny model warm-started on the run's skip-counting problems until its greedy held-out accuracy reaches
    ``SKIP_COUNT_WARM_START``'s target, with positions for the longest answer. Cached per problem space and seed."""
    from launch.bootstrap import bootstrap_model
    from launch.tiny_model import TinyModelSize

    t = cfg.task
    root = demo_model_dir(t.seed).parent
    out_dir = out_dir or root / f"tiny-skipcount-{t.max_terms}-{t.terms_exponent:g}-seed{t.seed}"
    return bootstrap_model(out_dir, seed=t.seed, task_type="skip_count", answer_suffix="\n",
                           task_kwargs=dict(max_terms=t.max_terms, exponent=t.terms_exponent),
                           size=TinyModelSize(max_position_embeddings=512), **SKIP_COUNT_WARM_START)


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


def check_resume_fits(resume: tuple[Path, dict], cfg: TrainConfig, dataset_digest: str, model_path: str) -> None:
    """Refuse a checkpoint made from other inputs (dataset, seed, batch shape, model), naming each difference."""
    from areal.fingerprint import fingerprint_mismatch, run_fingerprint
    from learners.checkpoint import CheckpointError

    path, manifest = resume
    saved = manifest.get("fingerprint")
    if saved is None:
        log.warning("%s records no fingerprint (an older version saved it): its inputs cannot be checked", path)
        return
    differences = fingerprint_mismatch(saved, run_fingerprint(cfg, dataset_digest, model_path))
    if differences:
        raise CheckpointError(f"{path} was saved by a run with other inputs: {'; '.join(differences)}. Resume with "
                              "the same settings, or start a new run in another out_dir")


def leave_later_timeline(cfg: TrainConfig, resume: tuple[Path, dict]) -> list[Path]:
    """Resuming an earlier step of this out_dir (a rollback, or past a newer checkpoint that did not verify): its
    later checkpoints belong to a timeline the run leaves; they are moved aside (and named on the console) so
    that a later resume or learner recovery never restores them."""
    from learners.checkpoint import CheckpointStore

    store = CheckpointStore(Path(cfg.out_dir) / "checkpoints", cfg.checkpoint.keep_last)
    path, manifest = resume
    if not store.root.is_dir() or Path(path).resolve().parent != store.root.resolve():
        return []
    moved = store.set_aside(int(manifest["step"]))
    if moved:
        log.warning("resuming step %d of this run: the checkpoints after it (%s) are moved to %s and will not be "
                    "restored", int(manifest["step"]), ", ".join(p.name for p in moved), moved[0].parent)
    return moved


def make_batcher(cfg: TrainConfig, model_path: str):
    """Token batches with the configured advantage for text; chain batches with DDPO's per-prompt
    normalisation for diffusion."""
    from areal.batching import ChainBatcher, TokenBatcher

    if cfg.is_diffusion:
        from areal.algos.ddpo import PerPromptStatTracker

        d = cfg.diffusion
        return ChainBatcher(PerPromptStatTracker(d.stat_buffer_size, d.stat_min_count) if d.per_prompt_stats else None)
    from transformers import AutoTokenizer

    return TokenBatcher(cfg.algo.advantage, AutoTokenizer.from_pretrained(model_path).pad_token_id or 0,
                        cfg.algo.mask_truncated)


def build_inputs(cfg: TrainConfig, resume) -> tuple[str, object, object]:
    """(model path, task, batcher): the demo model bootstrapped if needed, the dataset measured with the model's
    tokenizer, the checkpoint to resume checked against both."""
    from actors.milestones import MILESTONE
    from rollouts.tasks.factory import make_task

    model_path = resolve_model(cfg)
    batcher = make_batcher(cfg, model_path)
    task = make_task(cfg, model_path)
    for line in getattr(task, "report", []):
        log.info("%s", line, extra=MILESTONE)
    if resume is not None:
        check_resume_fits(resume, cfg, task.digest(), model_path)
        leave_later_timeline(cfg, resume)
    return model_path, task, batcher


def train(cfg: TrainConfig, resolved_yaml: str) -> dict:
    """Run one job to completion; returns its summary (also written to RUN_DIR/summary.json).

    Everything that can refuse the run is checked before its directory is made (``check_local``; ConfigError);
    what can only be found after (a chat dataset for a model without a chat template, a checkpoint made from
    other inputs) fails as ConfigError too, and a directory this run made is removed again, so the corrected
    command runs into it. A signal before training starts leaves nothing either."""
    from launch.preflight import ConfigError, check_local, one_line

    resume = check_local(cfg)  # first: a refusal costs a second, not the imports of torch and Ray
    import ray
    import torch

    from actors.driver import Driver
    from launch.console import close_console, setup_console
    from launch.interrupts import as_run_interrupted, resume_hint
    from launch.run_dir import prepare_run_dir
    from launch.sinks import make_sinks

    existed = Path(cfg.out_dir).is_dir()
    out_dir = prepare_run_dir(cfg, resumable=resume is not None)  # before anything is written there
    (out_dir / "config.yaml").write_text(resolved_yaml)
    setup_console(out_dir, cfg.logging.verbose)
    started_ray, driver, sinks, training, discard = False, None, [], False, False
    startup_errors = _start_up_errors()
    try:
        model_path, task, batcher = build_inputs(cfg, resume)
        started_ray = init_ray(cfg)
        sinks = make_sinks(cfg, out_dir)
        driver = Driver(cfg, model_path, task, batcher, sinks, use_gpu=torch.cuda.is_available(), resume=resume)
        training = True
        summary = driver.run()
    except startup_errors as exc:
        if training:
            raise
        discard = resume is None
        raise ConfigError(one_line(exc)) from None
    except KeyboardInterrupt as caught:
        exc = as_run_interrupted(caught)
        discard = resume is None and not training
        exc.resume_hint = resume_hint(cfg.out_dir, cfg.checkpoint.keep_last, started=not discard)
        exc.out_dir = cfg.out_dir
        log.error("%s; shutting the run down (%s)", exc, exc.resume_hint)
        raise exc from None
    finally:
        if driver is not None:
            driver.shutdown()
        else:
            for sink in sinks:
                sink.close()
        if started_ray:
            ray.shutdown()
        close_console()
        if discard:
            discard_run_dir(out_dir, existed)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def discard_run_dir(out_dir: Path, existed: bool) -> None:
    """Remove what a run that never started wrote: the directory it made, or the contents of one it was given."""
    import shutil

    if not existed:
        shutil.rmtree(out_dir, ignore_errors=True)
        return
    for path in out_dir.iterdir():
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink()
