"""Build the configured task (``task.type``)."""

from __future__ import annotations

from areal.config import TaskConfig
from rollouts.tasks.base import Task


def make_task(cfg: TaskConfig) -> Task:
    """The task named by ``cfg.type``, built from its typed settings."""
    if cfg.type == "arithmetic":
        from rollouts.tasks.arithmetic import ArithmeticTask

        return ArithmeticTask(seed=cfg.seed, eval_size=cfg.eval_size)
    if cfg.type == "gsm8k":
        from rollouts.tasks.gsm8k import GSM8KTask

        return GSM8KTask(cfg.path, eval_path=cfg.eval_path or None, eval_size=cfg.eval_size, seed=cfg.seed)
    raise ValueError(f"task.type: unknown task {cfg.type!r}; choose arithmetic or gsm8k")
