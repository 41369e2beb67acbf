"""Build the configured task (``task.type``) and the rewards that score it (``task.rewards``)."""

from __future__ import annotations

from areal.config import TrainConfig
from rollouts.rewards.base import RewardSettings
from rollouts.rewards.suite import RewardSuite
from rollouts.tasks.base import ScoredTask, Task


def make_task(cfg: TrainConfig, model_path: str = "") -> Task:
    """The task named by ``task.type``, built from its typed settings (``model_path``: the model whose tokenizer
    measures a dataset's prompts, or a diffusion pipeline whose class names are the prompts when ``task.path``
    is empty)."""
    t = cfg.task
    if t.is_dataset:
        from transformers import AutoTokenizer

        from rollouts.tasks.dataset import load_dataset_task

        return load_dataset_task(cfg, AutoTokenizer.from_pretrained(model_path))
    if t.type == "arithmetic":
        from rollouts.tasks.arithmetic import ArithmeticTask

        return ArithmeticTask(seed=t.seed, eval_size=t.eval_size, min_operand=t.min_operand,
                              max_operand=t.max_operand, operators=tuple(t.operators),
                              prompt_template=t.template, answer_format=t.answer_format,
                              min_operand_b=None if t.min_operand_b < 0 else t.min_operand_b,
                              max_operand_b=None if t.max_operand_b < 0 else t.max_operand_b)
    if t.type == "skip_count":
        from rollouts.tasks.skip_count import SkipCountTask

        return SkipCountTask(seed=t.seed, eval_size=t.eval_size, max_terms=t.max_terms, exponent=t.terms_exponent)
    if t.type == "image_prompts":
        from rollouts.image_rewards import make_image_reward
        from rollouts.tasks.image_prompts import ImagePromptTask, load_prompts

        return ImagePromptTask(load_prompts(t.path, model_path), make_image_reward(t.reward, t.reward_model_path),
                               t.eval_size)
    raise ValueError(f"task.type: unknown task {t.type!r}; choose dataset, arithmetic, gsm8k, skip_count or "
                     "image_prompts")


def reward_settings(cfg: TrainConfig) -> RewardSettings:
    """What the built-in rewards read from the config."""
    t, budget = cfg.task, cfg.rollout.max_new_tokens
    return RewardSettings(max_new_tokens=budget, overlong_buffer=t.overlong_buffer or max(1, budget // 4),
                          tests_key=t.tests_key, code_wall_seconds=min(8.0, 0.8 * t.reward_timeout_s),
                          url=t.reward_url, http_timeout_s=t.reward_http_timeout_s,
                          http_retries=t.reward_http_retries)


def make_reward_suites(cfg: TrainConfig, model_path: str = "") -> dict[str, RewardSuite]:
    """The rewards by name: "train", "eval" and every held-out set of ``task.eval_sets`` (its own rewards, or
    the task's). A dataset task's come from ``task.rewards``; a ScoredTask's is its own ``score``."""
    t = cfg.task
    if t.is_dataset:
        settings = reward_settings(cfg)
        train = RewardSuite.from_entries(t.reward_names, t.reward_weights, settings)
        suites = {"train": train, "eval": train}
        for extra in t.eval_sets:
            suites[extra.name] = RewardSuite.from_entries(
                extra.rewards, extra.reward_weights, settings, f"task.eval_sets[{extra.name}].rewards") \
                if extra.rewards else train
        return suites
    task = make_task(cfg, model_path)
    assert isinstance(task, ScoredTask)
    scored = RewardSuite.of_scorer(task.score, t.reward if t.type == "image_prompts" else t.type)
    return {"train": scored, "eval": scored}


def check_rewards(cfg: TrainConfig) -> None:
    """Resolve every reward entry of a dataset task here, before anything starts: a typo, a missing module or a
    bad setting fails in one line (``RewardConfigError``/``ValueError``) instead of in a worker."""
    if not cfg.task.is_dataset:
        return
    for suite in {id(s): s for s in make_reward_suites(cfg).values()}.values():
        suite.load()
