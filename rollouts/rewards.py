"""Scoring completions without letting a bad reward function take the run down.

A reward function that raises, hangs or returns a non-finite value yields a
typed ``RewardOutcome`` (reward 0, status and detail kept for metrics), never a
silent default.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Callable


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
