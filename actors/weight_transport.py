"""Which weight transport a run uses (``rollout.weight_transport``), from what this machine can do."""

from __future__ import annotations

import logging

from areal.config import TrainConfig
from areal.weight_sync import TransportCaps, TransportChoice, choose_transport

log = logging.getLogger(__name__)


def run_transport(cfg: TrainConfig, learner_on_gpu: bool, engine_on_gpu: bool) -> TransportChoice:
    """The transport for this run. The learner group, each learner and each rollout actor decide it alike from the
    config and the GPUs they see (an engine built without native transfer still loads a native offer's buckets).
    vLLM is asked about its native weight transfer only when both sides are on GPUs (importing it costs seconds
    and memory a CPU process need not pay)."""
    if cfg.lora_sync(engine_on_gpu) == "adapter":
        return TransportChoice("buckets", "", "learner.lora.sync=adapter: a few MB of adapters travel as buckets")
    backends, missing = frozenset(), "not looked for: a side runs on CPU"
    if learner_on_gpu and engine_on_gpu and not cfg.is_diffusion:
        from rollouts.engines.vllm_native import detect_native_backends

        backends, missing = detect_native_backends()
    caps = TransportCaps(text_engine=not cfg.is_diffusion, learner_on_gpu=learner_on_gpu, engine_on_gpu=engine_on_gpu,
                         shared_gpu=False, native_backends=backends, native_missing=missing)
    choice = choose_transport(cfg.rollout.weight_transport, caps)
    log.debug("weight transport: %s%s (%s)", choice.transport, f"/{choice.backend}" if choice.backend else "",
             choice.reason)
    return choice
