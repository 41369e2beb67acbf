"""Scoring completions without letting a bad reward function take the run down.

A reward function that raises, hangs or returns a non-finite value yields a
typed ``RewardOutcome`` (reward 0, status and detail kept for metrics), never a
silent default.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class RewardOutcome:
    """A reward and how it was obtained: ok, error, timeout or nonfinite."""

    value: float
    status: str = "ok"
    detail: str = ""


async def score_safely(fn: Callable[[], float], timeout_s: float) -> RewardOutcome:
    """Run ``fn`` off the event loop with a time limit and classify the result."""
    try:
        value = await asyncio.wait_for(asyncio.to_thread(fn), timeout_s)
    except asyncio.TimeoutError:
        return RewardOutcome(0.0, "timeout", f"reward took longer than {timeout_s}s (task.reward_timeout_s)")
    except Exception as exc:  # a reward bug must be recorded, not crash the rollout worker
        return RewardOutcome(0.0, "error", f"{type(exc).__name__}: {exc}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return RewardOutcome(0.0, "error", f"reward returned {type(value).__name__}, expected a number")
    if not math.isfinite(value):
        return RewardOutcome(0.0, "nonfinite", f"reward returned {value}")
    return RewardOutcome(value)


def failure_info(outcomes: Sequence[RewardOutcome]) -> dict:
    """A group's reward-failure counts by status, plus one example message when any failed."""
    failures = Counter(o.status for o in outcomes if o.status != "ok")
    info: dict = {"reward_failures": dict(failures)}
    if failures:
        info["reward_failure_example"] = next(o.detail for o in outcomes if o.status != "ok")
    return info
