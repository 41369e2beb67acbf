"""Inference engines; ``make_engine`` builds the one ``engine.type`` names."""

from __future__ import annotations

from areal.config.engine import EngineConfig
from rollouts.engines.base import Engine

ENGINE_TYPES = ("vllm",)


def make_engine(cfg: EngineConfig, model_path: str, seed_offset: int = 0, native_backend: str = "",
                lora_rank: int = 0, max_loras: int = 2) -> Engine:
    """The backend named by ``cfg.type``; its heavy imports (vLLM) happen only when it is chosen. ``native_backend``:
    receive weights through vLLM's native transfer ("nccl" or "ipc"; see areal.weight_sync); ``lora_rank`` > 0:
    versions arrive as LoRA adapters of that rank (learner.lora.sync=adapter), ``max_loras`` of them at once."""
    if cfg.type == "vllm":
        from rollouts.engines.vllm_engine import VLLMEngine

        return VLLMEngine(cfg, model_path, seed_offset, native_backend, lora_rank, max_loras)
    raise ValueError(f"config error: engine.type = {cfg.type!r}; expected one of {', '.join(ENGINE_TYPES)}")
