"""Inference engines; ``make_engine`` builds the one ``engine.type`` names."""

from __future__ import annotations

from areal.config.engine import EngineConfig
from rollouts.engines.base import Engine

ENGINE_TYPES = ("vllm",)


def make_engine(cfg: EngineConfig, model_path: str, seed_offset: int = 0) -> Engine:
    """The backend named by ``cfg.type``; its heavy imports (vLLM) happen only when it is chosen."""
    if cfg.type == "vllm":
        from rollouts.engines.vllm_engine import VLLMEngine

        return VLLMEngine(cfg, model_path, seed_offset)
    raise ValueError(f"config error: engine.type = {cfg.type!r}; expected one of {', '.join(ENGINE_TYPES)}")
