"""How data-parallel learner ranks combine gradients before each optimizer step.

``mean`` is DeepSpeed's own all-reduce. A robust ``learner.aggregator`` (or a
simulated Byzantine rank) instead streams every rank's flat gradient through
``areal.aggregation.bucketed`` over ``torch.distributed.all_gather`` and
writes the identical aggregate back into every rank's ``.grad``, so the
optimizer step that follows keeps the replicas identical. That needs each
rank's whole local gradient in ``param.grad``: ZeRO stage 0 only (stages 1-2
reduce-scatter inside DeepSpeed's backward hooks, stage 3 never materialises
full parameters); the config refuses other combinations.
"""

from __future__ import annotations

import logging
import time

import torch

from areal.aggregation.bucketed import BucketedAggregator, ByzantineSimulation
from areal.config import LearnerConfig
from learners.deepspeed_setup import Rendezvous

log = logging.getLogger(__name__)


def all_gather_rows(local: torch.Tensor, world_size: int) -> torch.Tensor:
    """Every rank's ``local`` [b] stacked as [world_size, b] (gloo and NCCL alike)."""
    if world_size == 1:
        return local.reshape(1, -1)
    out = torch.empty(world_size, local.numel(), dtype=local.dtype, device=local.device)
    torch.distributed.all_gather(list(out.unbind(0)), local.reshape(-1))
    return out


class GradientExchange:
    """Owns the gradient combination of one rank's DeepSpeed engine."""

    def __init__(self, engine, cfg: LearnerConfig, rdv: Rendezvous, seed: int = 0):
        self.engine, self.cfg, self.rdv = engine, cfg, rdv
        self.params = [p for p in engine.module.parameters() if p.requires_grad]
        self.steps = 0
        self.robust: BucketedAggregator | None = None
        if cfg.gathers_gradients:
            sim = None
            if cfg.byzantine.ranks:
                sim = ByzantineSimulation(tuple(cfg.byzantine.ranks), cfg.byzantine.attack, cfg.byzantine.omniscient,
                                          seed)
                log.warning("BYZANTINE SIMULATION ON: learner ranks %s send %r gradients (learner.byzantine); "
                            "for robustness experiments only", list(sim.ranks), sim.attack)
            self.robust = BucketedAggregator(
                cfg.aggregator, rdv.world_size, cfg.aggregator_f, cfg.aggregator_params(),
                bucket_numel=max(1, int(cfg.aggregation_bucket_mb * 2**20 / 4)), byzantine=sim,
            )
        if cfg.zero_stage == 0:
            # the engine's backward leaves local gradients; combine() reduces them (timed) or replaces them
            engine.enable_backward_allreduce = False

    def combine(self) -> dict[str, float]:
        """After ``engine.backward``: make every rank's ``.grad`` the combined gradient; returns timings
        and aggregation statistics (unprefixed names; the learner namespaces them)."""
        start = time.perf_counter()
        info: dict[str, float] = {}
        if self.robust is None:
            if self.cfg.zero_stage != 0:
                return {}  # DeepSpeed reduces inside backward or step; nothing left to do or to time
            # the mean all-reduce itself: allreduce_gradients() would skip it, as outside engine.step() this
            # is not an accumulation boundary when the learner owns accumulation
            self.engine.buffered_allreduce_fallback()
        else:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            flat = torch.cat([g.reshape(-1) for g in grads])
            combined = self.robust(flat, lambda x: all_gather_rows(x, self.rdv.world_size), self.steps)
            offset = 0
            for p, g in zip(self.params, grads):
                p.grad = combined[offset: offset + g.numel()].view_as(g).to(g.dtype)
                offset += g.numel()
            info = {f"aggregation_{k}": v for k, v in self.robust.last_info.items()}
        self.steps += 1
        info["exchange_seconds"] = time.perf_counter() - start
        return info
