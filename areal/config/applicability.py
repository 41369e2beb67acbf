"""Settings that the configured run would not read: refused, naming the setting that is read instead.

A key set for another engine, algorithm or task type is accepted by the schema and then silently ignored
(``learner.lora.rank`` on a DDPO run, whose adapters are ``diffusion.lora_rank``); a user then believes the
run did what it did not. Each rule below names when a family of keys is not read, and what is read instead.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

DATASET_ONLY = ("split", "prompt_key", "answer_key", "rewards", "reward_weights", "reward_url", "reward_http_timeout_s",
                "reward_http_retries", "overlong_buffer", "tests_key", "eval_split",
                "eval_sets", "eval_path")
ARITHMETIC_ONLY = ("operators", "min_operand", "max_operand", "min_operand_b", "max_operand_b", "answer_format")


@dataclass(frozen=True)
class NotRead:
    """Keys (a prefix ending in '.' covers a section) that a run for which ``applies`` holds does not read."""

    keys: tuple[str, ...]
    applies: Callable
    when: str
    instead: str


RULES = (
    NotRead(("learner.lora.",), lambda c: c.is_diffusion, "with engine.type=diffusers",
            "DDPO's adapters are diffusion.lora_rank and diffusion.lora_alpha"),
    NotRead(("algo.advantage",), lambda c: c.is_diffusion, "with engine.type=diffusers",
            "DDPO normalises rewards per prompt (diffusion.per_prompt_stats)"),
    NotRead(tuple(f"algo.{k}" for k in ("kl_coef", "kl_estimator", "kl_in", "loss_agg", "loss_norm_tokens",
                                        "entropy_coef", "mask_truncated")),
            lambda c: c.is_diffusion, "with engine.type=diffusers", "the DDPO loss is diffusion.*'s"),
    NotRead(("algo.kl_estimator", "algo.kl_in", "learner.ref_offload"), lambda c: not c.algo.kl_coef,
            "with algo.kl_coef=0", "set algo.kl_coef to train against the reference policy"),
    NotRead(("learner.ref_offload",), lambda c: c.learner.lora.rank > 0, "with LoRA (learner.lora.rank > 0)",
            "the reference is the base model with the adapters disabled: there is no copy to offload"),
    NotRead(("diffusion.",), lambda c: not c.is_diffusion, "with engine.type=vllm",
            "diffusion.* is read by DDPO runs only (engine.type=diffusers)"),
    NotRead(tuple(f"env.{k}" for k in ("factory", "tools", "tool_syntax", "max_turns", "max_tool_calls",
                                       "max_episode_tokens", "workers", "num_cpus", "concurrency", "step_timeout_s",
                                       "sandbox_insecure")),
            lambda c: not c.env.multi_turn, "with env.type=none", "set env.type=tools or custom for multi-turn runs"),
    NotRead(tuple(f"task.{k}" for k in DATASET_ONLY), lambda c: not c.task.is_dataset, "unless task.type=dataset",
            "an arithmetic task scores exact answers (task.answer_format), image_prompts its task.reward"),
    NotRead(tuple(f"task.{k}" for k in ARITHMETIC_ONLY), lambda c: c.task.type != "arithmetic",
            "unless task.type=arithmetic", "a dataset's rows and task.rewards define the problems and their scoring"),
    NotRead(("task.max_terms", "task.terms_exponent"), lambda c: c.task.type != "skip_count",
            "unless task.type=skip_count", "they shape skip_count's generated problems only"),
    NotRead(("task.prompt_template",), lambda c: c.task.type == "skip_count", "with task.type=skip_count",
            "its prompts are always '40_down_by_7:'"),
    NotRead(("task.reward", "task.reward_model_path"), lambda c: c.task.type != "image_prompts",
            "unless task.type=image_prompts", "text tasks are scored by task.rewards (task.type=dataset)"),
    NotRead(("rollout.length_tail_sigma",), lambda c: not c.rollout.length_tail_median,
            "with rollout.length_tail_median=0", "set rollout.length_tail_median to draw completion lengths"),
)


def value_at(cfg, key: str):
    return operator.attrgetter(key)(cfg)


def check_read(cfg, defaults) -> None:
    """Refuse any key of ``cfg`` that differs from ``defaults`` (the schema's TrainConfig) while a rule says this
    run does not read it."""
    from areal.config.keys import config_keys

    leaves = [k for k, info in config_keys().items() if info.type != "section"]
    for rule in RULES:
        if not rule.applies(cfg):
            continue
        for key in (k for k in leaves if any(k == p or (p.endswith(".") and k.startswith(p)) for p in rule.keys)):
            value = value_at(cfg, key)
            if value != value_at(defaults, key):
                raise ValueError(f"config error: {key} = {value!r} is not read {rule.when}: {rule.instead}; leave "
                                 f"{key} out")
