"""Gradient aggregators: [n_workers, d] -> [d], all reachable by config name.

Every entry of ``AGGREGATORS`` takes ``(grads, f, **params)`` where f is the
declared number of Byzantine workers; ``make_aggregator(name, **params)``
binds the parameters from config and checks the name.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from areal.aggregation.attacks import ATTACKS, apply_attack
from areal.aggregation.flag import flag, flag_aggregate, flag_default_init, flag_objective
from areal.aggregation.robust import (
    bulyan,
    coordinate_median,
    geometric_median,
    krum,
    mean,
    multi_krum,
    trimmed_mean,
)

Aggregator = Callable[..., torch.Tensor]


AGGREGATORS: dict[str, Aggregator] = {
    "mean": mean,
    "flag": flag,
    "coordinate_median": coordinate_median,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
    "multi_krum": multi_krum,
    "bulyan": bulyan,
    "geometric_median": geometric_median,
}


def make_aggregator(name: str, **params) -> Aggregator:
    """The aggregator called ``name`` (``learner.aggregator``) with ``params`` bound."""
    if name not in AGGREGATORS:
        raise ValueError(f"learner.aggregator: unknown aggregator {name!r}; choose one of {sorted(AGGREGATORS)}")
    fn = AGGREGATORS[name]
    return functools.partial(fn, **params) if params else fn


__all__ = [
    "AGGREGATORS",
    "ATTACKS",
    "apply_attack",
    "bulyan",
    "coordinate_median",
    "flag",
    "flag_aggregate",
    "flag_default_init",
    "flag_objective",
    "geometric_median",
    "krum",
    "make_aggregator",
    "mean",
    "multi_krum",
    "trimmed_mean",
]
