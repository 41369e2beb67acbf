"""Inference engine settings (``engine.*``)."""

from __future__ import annotations

from dataclasses import dataclass

from areal.config._checks import require

ENGINE_TYPES = ("vllm", "diffusers")
KV_ON_UPDATE = ("recompute", "keep")


@dataclass
class EngineConfig:
    """Which inference backend generates, and how it is sized."""

    type: str = "vllm"
    """Backend: "vllm" (text: vLLM's async engine; its CPU build without a GPU) or "diffusers" (images: a
    continuous-batching DDIM sampler over a local diffusers pipeline; settings under diffusion.*)."""
    dtype: str = "auto"
    """Weights dtype in the engine; "auto" picks float32 on CPU (bf16 is ~30x slower there) and bfloat16 on GPU."""
    max_model_len: int = 256
    """Longest prompt + completion, in tokens."""
    max_num_seqs: int = 64
    """Sequences one engine decodes together (continuous batching width)."""
    kv_cache_gb: float = 1.0
    """CPU build: KV cache size in GiB (passed as bytes; a VLLM_CPU_KVCACHE_SPACE env var, whole GiB, overrides it)."""
    gpu_memory_utilization: float = 0.85
    """GPU build: fraction of GPU memory vLLM may take."""
    enforce_eager: bool = True
    """Skip graph capture: faster start-up, which dominates on small models."""
    seed: int = 0
    """Sampling seed of the engine (each worker adds its rank)."""
    kv_on_update: str = "recompute"
    """What a weight update does to the KV cache of requests in flight. "recompute" (AReaL's interruptible
    rollout): drop it, so every later token is drawn from the new weights given the whole prefix; costs a
    prefill of every sequence in flight per version. "keep" (PipelineRL's in-flight update): later tokens are
    drawn by the new weights over keys and values the old ones computed. Either way the behaviour log-probs
    are those of the distribution each token was actually drawn from, which is what decoupled PPO needs; a
    token's version tag names the weights that drew it. On the CPU demo "keep" saves ~0.6 s per update
    with 512 sequences in flight (docs/performance.md)."""

    def __post_init__(self):
        require(self.type in ENGINE_TYPES, "engine.type", self.type, "'vllm' or 'diffusers'")
        require(self.dtype in ("auto", "float32", "bfloat16", "float16"), "engine.dtype", self.dtype,
                "one of auto, float32, bfloat16, float16")
        require(self.max_model_len >= 8, "engine.max_model_len", self.max_model_len, "an int >= 8")
        require(self.max_num_seqs >= 1, "engine.max_num_seqs", self.max_num_seqs, "an int >= 1")
        require(self.kv_on_update in KV_ON_UPDATE, "engine.kv_on_update", self.kv_on_update,
                "'recompute' (exact: KV recomputed with the new weights) or 'keep' (faster: KV kept)")
        require(self.kv_cache_gb > 0, "engine.kv_cache_gb", self.kv_cache_gb, "a positive size in GiB")
        require(0 < self.gpu_memory_utilization <= 1, "engine.gpu_memory_utilization",
                self.gpu_memory_utilization, "a fraction in (0, 1]")
