"""Reward functions written as TRL and verl users write them, for the reward-suite tests (importable by module
path, as reward processes need)."""

import asyncio
import time


def exact(prompts, completions, answer, **kwargs):
    """TRL style: 1.0 when the completion is the answer column."""
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [1.0 if t.strip() == a else 0.0 for t, a in zip(texts, answer)]


def echo_kwargs(prompts, completions, completion_ids, trainer_state, log_metric, **columns):
    """Scores what it was given so a test can read it back: the step, the ids' lengths and a column."""
    log_metric("seen", float(len(completions)))
    return [trainer_state.global_step + 10 * len(ids) + 100 * columns["level"][i]
            for i, ids in enumerate(completion_ids)]


def chat_shape(prompts, completions, **kwargs):
    """1.0 when prompts are message lists and completions one assistant message, as TRL passes chat data."""
    ok = all(isinstance(p, list) and p[-1]["role"] == "user" for p in prompts) and \
        all(c[0]["role"] == "assistant" and isinstance(c[0]["content"], str) for c in completions)
    return [float(ok)] * len(completions)


async def async_exact(prompts, completions, answer, **kwargs):
    await asyncio.sleep(0)
    return exact(prompts, completions, answer)


def length_or_none(prompts, completions, **kwargs):
    """None (does not apply) for "skip", else the length."""
    return [None if c == "skip" else float(len(c)) for c in completions]


def picky(prompts, completions, **kwargs):
    """Raises on a batch holding "boom" (each completion then scored alone), NaN for "nan", a string for "str"."""
    if "boom" in completions:
        raise RuntimeError("picky cannot read boom")
    return [float("nan") if c == "nan" else ("oops" if c == "str" else 1.0) for c in completions]


def short_list(prompts, completions, **kwargs):
    return [1.0]


def slow(prompts, completions, **kwargs):
    if "slow" in completions:
        time.sleep(3600)
    return [1.0] * len(completions)


def verl_score(data_source, solution_str, ground_truth, extra_info=None):
    """verl style: a dict with the score for one source, a float for the others."""
    if data_source == "dict":
        return {"score": float(solution_str == ground_truth), "acc": True}
    return float(solution_str == ground_truth) + (extra_info or {}).get("bonus", 0.0)
