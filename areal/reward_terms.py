"""Reward-shaping terms that are pure arithmetic on a completion's properties (ALGORITHMS.md section 6)."""

from __future__ import annotations

import math
from typing import Sequence


def soft_overlong_penalty(length: int, max_len: int, buffer: int) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System
    at Scale", eq. 13) of a completion of ``length`` tokens under the budget ``max_len`` (Lmax) with the last
    ``buffer`` tokens (Lc) as the ramp: 0 up to Lmax - Lc, then (Lmax - Lc - length) / Lc, reaching -1 at Lmax,
    and -1 beyond. The paper's factor is the reward's weight, applied by the caller."""
    if not 1 <= buffer <= max_len:
        raise ValueError(f"soft_overlong_penalty: buffer={buffer}, expected 1 <= buffer <= max_len={max_len}")
    free = max_len - buffer
    if length <= free:
        return 0.0
    if length <= max_len:
        return (free - length) / buffer
    return -1.0


def weighted_sum(values: Sequence[float | None], weights: Sequence[float]) -> float:
    """sum_i w_i * v_i over a completion's reward components, a component that does not apply (None) counting 0
    as in TRL's GRPOTrainer; NaN when any component is NaN (a failed component leaves the sample unscored)."""
    if len(values) != len(weights):
        raise ValueError(f"weighted_sum: {len(values)} values for {len(weights)} weights")
    total = 0.0
    for value, weight in zip(values, weights):
        if value is None:
            continue
        if math.isnan(value):
            return math.nan
        total += weight * value
    return total
