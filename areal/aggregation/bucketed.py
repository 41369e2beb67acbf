"""Robust aggregation across data-parallel ranks, one bucket of coordinates at a time.

No rank can afford n copies of a large model's gradient, so the exchange is
streamed: every rank passes its flat gradient through fixed-size buckets and a
``gather`` callable ([b] on this rank -> [n, b], every rank's bucket) hides the
transport (``torch.distributed.all_gather`` in the learner, a plain stack in
tests). Peak extra memory is n x bucket, whatever d is.

The rules fall into three shapes:

- per-coordinate (mean, coordinate_median, trimmed_mean): one pass, each bucket
  aggregated on its own;
- span rules (flag, krum, multi_krum, geometric_median): the result is g^T c for
  coefficients c that depend only on the Gram matrix G = g g^T, so pass one
  accumulates G over buckets, c is solved in n x n, and pass two re-gathers each
  bucket and emits g_b^T c;
- bulyan: its Krum-based selection needs G (pass one), then its trimmed
  per-coordinate mean runs over the selected rows bucket by bucket (pass two).

Every rank computes from the same gathered bytes with the same operations, so
every rank gets the same result and data-parallel replicas stay identical.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from areal.aggregation.attacks import ATTACKS, apply_attack
from areal.aggregation.flag import flag_coefficients
from areal.aggregation.robust import (
    bulyan_coordinates,
    bulyan_selection,
    coordinate_median,
    geometric_median_coefficients,
    krum_coefficients,
    mean,
    multi_krum_coefficients,
    sq_distances_from_gram,
    trimmed_mean,
)

Gather = Callable[[torch.Tensor], torch.Tensor]

COORDINATE_RULES = {"mean": mean, "coordinate_median": coordinate_median, "trimmed_mean": trimmed_mean}
SPAN_RULES = {
    "flag": None,  # needs its parameters: see BucketedAggregator._coefficients
    "krum": krum_coefficients,
    "multi_krum": multi_krum_coefficients,
    "geometric_median": geometric_median_coefficients,
}
RULES = (*COORDINATE_RULES, *SPAN_RULES, "bulyan")

# the fewest workers each rule is defined for, as a function of the declared Byzantine count f
_MIN_WORKERS: dict[str, tuple[Callable[[int], int], str]] = {
    "mean": (lambda f: 1, "n >= 1"),
    "flag": (lambda f: f + 1, "n >= f + 1"),
    "coordinate_median": (lambda f: 2 * f + 1, "n >= 2f + 1"),
    "trimmed_mean": (lambda f: 2 * f + 1, "n >= 2f + 1"),
    "geometric_median": (lambda f: 2 * f + 1, "n >= 2f + 1"),
    "krum": (lambda f: 2 * f + 3, "n >= 2f + 3"),
    "multi_krum": (lambda f: 2 * f + 3, "n >= 2f + 3"),
    "bulyan": (lambda f: 4 * f + 3, "n >= 4f + 3"),
}


def check_rule(name: str, n: int, f: int) -> None:
    """Refuse an unknown rule or too few workers, naming the config keys that fix it."""
    if name not in _MIN_WORKERS:
        raise ValueError(f"learner.aggregator: unknown aggregator {name!r}; choose one of {sorted(_MIN_WORKERS)}")
    need, rule = _MIN_WORKERS[name]
    if n < need(f):
        raise ValueError(
            f"learner.aggregator={name} needs {rule} (learner.workers={n}, learner.aggregator_f={f}); "
            "add learners or lower learner.aggregator_f"
        )


@dataclass(frozen=True)
class ByzantineSimulation:
    """Ranks whose gradient is replaced by ``attack`` after the exchange (tests and benchmarks only).

    The attacker is simulated on every rank from the gathered bucket, so it is
    as informed as the attack allows (``omniscient``: sees all honest rows) and
    sends the same vector in both passes (random attacks draw from a generator
    seeded by (seed, step, bucket)).
    """

    ranks: tuple[int, ...]
    attack: str
    omniscient: bool = True
    seed: int = 0
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.attack not in ATTACKS:
            raise ValueError(f"learner.byzantine.attack: unknown attack {self.attack!r}; "
                             f"choose one of {sorted(ATTACKS)}")


class BucketedAggregator:
    """``learner.aggregator`` applied to n ranks' flat gradients, streamed in buckets."""

    def __init__(self, name: str, n: int, f: int = 0, params: dict | None = None,
                 bucket_numel: int = 1 << 24, byzantine: ByzantineSimulation | None = None):
        check_rule(name, n, f)
        if bucket_numel < 1:
            raise ValueError(f"learner.aggregation_bucket_mb: bucket must hold >= 1 element, got {bucket_numel}")
        if byzantine is not None and any(not 0 <= r < n for r in byzantine.ranks):
            raise ValueError(f"learner.byzantine.ranks: {list(byzantine.ranks)} out of range for {n} learners")
        self.name, self.n, self.f, self.params = name, n, f, dict(params or {})
        self.bucket_numel, self.byzantine = bucket_numel, byzantine
        self.last_info: dict[str, float] = {}

    def __call__(self, local: torch.Tensor, gather: Gather, step: int = 0) -> torch.Tensor:
        """The aggregate [d] of every rank's ``local`` [d]; every rank must call it with its own."""
        dtype = torch.float64 if local.dtype == torch.float64 else torch.float32
        buckets = local.reshape(-1).to(dtype).split(self.bucket_numel)
        # ranks whose gradient is not finite are left out (an overflow, or a broken worker)
        finite = gather(torch.isfinite(local).all().to(dtype).reshape(1)).reshape(-1) > 0
        live = torch.nonzero(finite).reshape(-1)
        check_rule(self.name, len(live), self.f)
        self.last_info = {"dropped_ranks": float(self.n - len(live)), "attack_seconds": 0.0}

        def rows(k: int) -> torch.Tensor:
            return self._attacked(gather(buckets[k].contiguous())[live], live.tolist(), k, step)

        if self.name in COORDINATE_RULES:
            out = [COORDINATE_RULES[self.name](rows(k), self.f) for k in range(len(buckets))]
        else:
            gram = 0
            for k in range(len(buckets)):  # pass one
                part = rows(k)
                gram = gram + (part @ part.T).double()
            gram = gram.cpu()  # n x n: the rules run on the host whatever device the buckets are on
            if self.name == "bulyan":
                chosen = bulyan_selection(sq_distances_from_gram(gram), self.f)
                out = [bulyan_coordinates(rows(k)[chosen], self.f) for k in range(len(buckets))]
            else:
                coef = self._coefficients(gram, dtype).to(dtype=dtype, device=local.device)
                self.last_info["max_coefficient"] = float(coef.abs().max())
                out = [coef @ rows(k) for k in range(len(buckets))]  # pass two
        return torch.cat(out).to(local.dtype).reshape(local.shape)

    def _coefficients(self, gram: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.name == "flag":
            p = self.params
            m = p.get("m") or max(1, (gram.shape[0] - self.f) // 2)
            return flag_coefficients(gram, m, p.get("lam", 0.0), p.get("iters", 1), p.get("rescale", "median_norm"),
                                     eps=torch.finfo(dtype).eps)
        return SPAN_RULES[self.name](gram, self.f)

    def _attacked(self, rows: torch.Tensor, ranks: list[int], bucket: int, step: int) -> torch.Tensor:
        """``rows`` [len(ranks), b] (the live ranks' bucket) with the simulated attackers' rows replaced."""
        sim = self.byzantine
        attackers = [i for i, rank in enumerate(ranks) if sim is not None and rank in sim.ranks]
        if not attackers:
            return rows
        start = time.perf_counter()  # simulating the attacker is not aggregation cost: timed apart
        gen = torch.Generator().manual_seed(hash((sim.seed, step, bucket)) & 0x7FFF_FFFF_FFFF)
        out = apply_attack(sim.attack, rows, attackers, generator=gen, omniscient=sim.omniscient, **sim.params)
        self.last_info["attack_seconds"] = self.last_info.get("attack_seconds", 0.0) + time.perf_counter() - start
        return out
