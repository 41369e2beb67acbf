"""What one reward computation produced: a score, or a typed failure that is never a score.

A reward function that raises, runs out of memory, hangs (``rollouts.reward_pool`` kills it) or returns a
non-finite value yields a ``RewardOutcome`` whose value is NaN, with its status and detail kept for metrics.
NaN, not 0: for a reward such as JPEG compressibility (around -1.4) 0 would be the best score there is. The
sample keeps the NaN (``Trajectory.reward_ok`` is False), and batchers and evaluation leave it out.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

FAILURE_STATUSES = ("error", "memory", "timeout", "nonfinite")


@dataclass(frozen=True)
class RewardOutcome:
    """A reward and how it was obtained: ok, or one of ``FAILURE_STATUSES`` (then ``value`` is NaN)."""

    value: float
    status: str = "ok"
    detail: str = ""
    components: tuple = field(default=(), compare=False)
    """(name, value) of each reward function the value sums: a number, None (does not apply) or NaN (failed)."""

    def __post_init__(self):
        if self.status != "ok" and self.status not in FAILURE_STATUSES:
            raise ValueError(f"RewardOutcome: status {self.status!r}, expected ok or one of {FAILURE_STATUSES}")
        if self.ok != math.isfinite(self.value):
            raise ValueError(f"RewardOutcome: status {self.status!r} with value {self.value}; an ok outcome has a "
                             "finite value and a failed one has NaN")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def failed(cls, status: str, detail: str) -> "RewardOutcome":
        """A failure: no score, only why."""
        return cls(math.nan, status, detail)


def outcome_of(value) -> RewardOutcome:
    """Classify what a reward function returned: a finite number is a score, anything else a failure."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return RewardOutcome.failed("error", f"reward returned {type(value).__name__}, expected a number")
    if not math.isfinite(number):
        return RewardOutcome.failed("nonfinite", f"reward returned {number}")
    return RewardOutcome(number)


def failure_info(outcomes: Sequence[RewardOutcome]) -> dict:
    """A group's reward-failure counts by status, plus one example message when any failed."""
    failures = Counter(o.status for o in outcomes if not o.ok)
    info: dict = {"reward_failures": dict(failures)}
    if failures:
        info["reward_failure_example"] = next(o.detail for o in outcomes if not o.ok)
    return info
