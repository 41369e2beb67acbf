"""Everything DeepSpeed-specific in one place: process-group rendezvous and engine construction."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from areal.config import LearnerConfig


@dataclass(frozen=True)
class Rendezvous:
    """Where a learner sits in its data-parallel group."""

    rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500


log = logging.getLogger(__name__)

# DeepSpeed JIT-builds its CPU shared-memory collective op on first use; torch guards the build with a lock file
# that a process killed mid-build leaves behind, and every later build then waits on it forever. A build takes
# about a minute: a lock this old belongs to no live build.
STALE_BUILD_LOCK_S = 600.0


def remove_stale_build_locks(extensions_dir: Path | None = None, max_age_s: float = STALE_BUILD_LOCK_S) -> list[Path]:
    """Delete the lock files of torch C++ extension builds (``<dir>/<op>/lock``) older than ``max_age_s``;
    returns what was removed. ``extensions_dir``: torch's default (``TORCH_EXTENSIONS_DIR``, else its cache)."""
    if extensions_dir is None:
        from torch.utils.cpp_extension import get_default_build_root

        extensions_dir = Path(get_default_build_root())
    removed = []
    for lock in Path(extensions_dir).glob("*/*/lock"):
        try:
            if time.time() - lock.stat().st_mtime > max_age_s:
                lock.unlink()
                removed.append(lock)
        except FileNotFoundError:  # a live build finished meanwhile
            continue
    for lock in removed:
        log.warning("removed a stale extension build lock left by a killed process: %s", lock)
    return removed


def use_cuda() -> bool:
    """GPU learners when CUDA is present; otherwise DeepSpeed's CPU accelerator and gloo."""
    return torch.cuda.is_available()


def init_process_group(rdv: Rendezvous) -> None:
    """Join the data-parallel group (gloo on CPU, NCCL on GPU) once per process."""
    if not use_cuda():
        # must precede the first deepspeed import: the accelerator is chosen at import time
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        remove_stale_build_locks()
    os.environ.update(
        MASTER_ADDR=rdv.master_addr,
        MASTER_PORT=str(rdv.master_port),
        RANK=str(rdv.rank),
        LOCAL_RANK="0",
        WORLD_SIZE=str(rdv.world_size),
    )
    import deepspeed

    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if use_cuda() else "gloo")


def deepspeed_config(cfg: LearnerConfig, world_size: int) -> dict:
    """The DeepSpeed JSON config. The learner owns gradient accumulation: a minibatch takes as many backward
    passes as its token budget needs (``learner.max_tokens_per_mb``), each loss already normalised for the whole
    minibatch, and ``engine.step()`` after the last one is the boundary (DeepSpeed's unmanaged accumulation)."""
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_cuda()}
    if cfg.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": use_cuda()}
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "managed_gradient_accumulation": False,
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.offload_optimizer or cfg.offload_params:
        # the torch AdamW below steps the fp32 master weights on the CPU; DeepSpeed's own CPU Adam would be
        # faster but JIT-builds for ~90 s on first use, so it is not forced
        config["zero_force_ds_cpu_optimizer"] = False
    if cfg.grad_clip > 0:
        config["gradient_clipping"] = cfg.grad_clip
    if use_cuda() and not cfg.gathers_gradients:
        # DeepSpeed's bf16 optimizer copies gradients into its own fp32 buffers inside backward,
        # out of reach of a robust aggregator; robust learners therefore train in fp32
        config["bf16"] = {"enabled": True}
    return config


def lr_factor(cfg: LearnerConfig, total_updates: int):
    """LR multiplier after ``step`` optimizer steps: linear warm-up, then constant or cosine to 0."""
    import math

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_decay == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, total_updates - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def make_engine(model: torch.nn.Module, cfg: LearnerConfig, rdv: Rendezvous, total_updates: int = 1):
    """Wrap ``model`` in a DeepSpeed engine with a plain torch AdamW and the configured LR schedule.

    A torch optimizer avoids JIT-building DeepSpeed's fused CPU Adam (~70 s on CPU).
    """
    init_process_group(rdv)
    import deepspeed

    # frozen parameters (a LoRA base) get no optimizer state
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, total_updates))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                      config=deepspeed_config(cfg, rdv.world_size))
    return engine


def full_state_dict(engine, zero_stage: int) -> dict[str, torch.Tensor]:
    """The whole model's parameters on CPU, gathered across ranks under ZeRO-3."""
    module = engine.module
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def state_sizes(engine, zero_stage: int) -> dict[str, int]:
    """Bytes of every state-dict entry of the whole model (ZeRO-3 parameters report their full shape)."""
    module = engine.module
    params = dict(module.named_parameters())
    sizes = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        param = params.get(name)
        numel = getattr(param, "ds_numel", None) if zero_stage == 3 and param is not None else None
        sizes[name] = (numel if numel is not None else tensor.numel()) * tensor.element_size()
    return sizes


def partial_state_dict(engine, zero_stage: int, names: list[str]) -> dict[str, torch.Tensor]:
    """The whole-model tensors of ``names`` on CPU, gathered across ranks under ZeRO-3 (collective: every rank
    calls it with the same names). Below ZeRO-3 on CPU they are views of the live weights, no copy: the caller
    writes them out before the next optimizer step."""
    module = engine.module
    if zero_stage == 3:
        import deepspeed

        params = dict(module.named_parameters())
        gathered = [params[n] for n in names if n in params]
        with deepspeed.zero.GatheredParameters(gathered, modifier_rank=None):
            state = module.state_dict()
            return {n: state[n].detach().cpu().clone() for n in names}
    state = module.state_dict()
    return {n: state[n].detach().cpu() for n in names}
