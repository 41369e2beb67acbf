"""Build the configured task (``task.type``)."""

from __future__ import annotations

from areal.config import TaskConfig
from rollouts.tasks.base import Task


def make_task(cfg: TaskConfig, model_path: str = "") -> Task:
    """The task named by ``cfg.type``, built from its typed settings (``model_path``: a diffusion pipeline whose
    class names are the prompts when ``task.path`` is empty)."""
    if cfg.type == "arithmetic":
        from rollouts.tasks.arithmetic import ArithmeticTask

        return ArithmeticTask(seed=cfg.seed, eval_size=cfg.eval_size, min_operand=cfg.min_operand,
                              max_operand=cfg.max_operand, operators=tuple(cfg.operators),
                              prompt_template=cfg.prompt_template, answer_format=cfg.answer_format,
                              min_operand_b=None if cfg.min_operand_b < 0 else cfg.min_operand_b,
                              max_operand_b=None if cfg.max_operand_b < 0 else cfg.max_operand_b)
    if cfg.type == "gsm8k":
        from rollouts.tasks.gsm8k import GSM8KTask

        return GSM8KTask(cfg.path, eval_path=cfg.eval_path or None, eval_size=cfg.eval_size, seed=cfg.seed)
    if cfg.type == "image_prompts":
        from rollouts.image_rewards import make_image_reward
        from rollouts.tasks.image_prompts import ImagePromptTask, load_prompts

        return ImagePromptTask(load_prompts(cfg.path, model_path), make_image_reward(cfg.reward, cfg.reward_model_path),
                               cfg.eval_size)
    raise ValueError(f"task.type: unknown task {cfg.type!r}; choose arithmetic, gsm8k or image_prompts")
