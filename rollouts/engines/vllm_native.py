"""What the installed vLLM offers for native weight transfer (its ``weight_transfer`` engines: NCCL, CUDA IPC).

Only detection lives here: whether both halves exist (the engine-side receivers and the trainer-side
senders, registered by backend name) and whether ``AsyncLLM`` has the update calls. A vLLM without them
(older releases, custom builds) yields no backends, and ``areal.weight_sync.choose_transport`` falls back.
"""

from __future__ import annotations

import importlib
from typing import Callable

from areal.weight_sync import NATIVE_BACKENDS

ENGINE_CALLS = ("init_weight_transfer_engine", "start_weight_update", "update_weights", "finish_weight_update",
                "update_weight_version")


def detect_native_backends(import_module: Callable = importlib.import_module) -> tuple[frozenset[str], str]:
    """(backends among NATIVE_BACKENDS that vLLM registers on both sides, "") or (frozenset(), what is missing)."""
    try:
        transfer = import_module("vllm.distributed.weight_transfer")
        async_llm = import_module("vllm.v1.engine.async_llm").AsyncLLM
    except (ImportError, AttributeError) as exc:
        return frozenset(), f"vLLM has no weight-transfer API ({type(exc).__name__}: {exc})"
    lacking = [call for call in ENGINE_CALLS if not callable(getattr(async_llm, call, None))]
    if lacking:
        return frozenset(), f"AsyncLLM lacks {', '.join(lacking)}"
    registries = []
    for factory in ("WeightTransferEngineFactory", "WeightTransferTrainerFactory"):
        registry = getattr(getattr(transfer, factory, None), "_registry", None)
        if not isinstance(registry, dict):
            return frozenset(), f"vllm.distributed.weight_transfer has no {factory} registry"
        registries.append(set(registry))
    found = frozenset(b for b in NATIVE_BACKENDS if all(b in r for r in registries))
    return found, "" if found else f"no {' or '.join(NATIVE_BACKENDS)} engine registered on both sides"
