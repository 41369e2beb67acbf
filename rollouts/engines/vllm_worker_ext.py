"""Runs inside vLLM's worker (``worker_extension_cls``): in-place weight reloads, from a folder or from buckets.

Both end by re-packing an LM head tied to the embedding, which vLLM's reload leaves stale on the CPU build.
Each returns its timings, so the engine can say where an update's time went.
"""

from __future__ import annotations

import time

import torch

from rollouts.engines.base import BucketFeed


class TiedHeadReloadExtension:
    """Mixed into vLLM's worker: in-place reloads that also refresh a tied LM head."""

    def reload_weights_from(self, weights_path: str) -> dict[str, float]:
        """Reload HF weights from ``weights_path``, then re-pack an output head tied to the embedding."""
        started = time.perf_counter()
        self.reload_weights(weights_path=weights_path)
        return self._finish_reload(started)

    def reload_weights_from_buckets(self, feed: dict) -> dict[str, float]:
        """Reload from a ``BucketFeed`` (sent as a dict: collective_rpc carries plain values) in one layerwise
        session: each bucket is read when it has arrived and each layer is processed as soon as it is whole.
        A failure leaves no half-open session behind (a later reload would count stale partial layers)."""
        from rollouts.engines.bucket_reader import iter_bucket_tensors

        started = time.perf_counter()
        bucket_feed = BucketFeed(**{**feed, "paths": tuple(feed["paths"]),
                                    "names": tuple(tuple(n) for n in feed["names"])})
        try:
            self.reload_weights(weights_iterator=iter_bucket_tensors(bucket_feed))
        except BaseException:
            self._close_layerwise_session()
            raise
        return self._finish_reload(started)

    def _close_layerwise_session(self) -> None:
        """After a failed streamed reload: close vLLM's layerwise session (layers left partial are processed
        with what they got, the others get their old tensors back); the weights are inconsistent until the
        next reload succeeds, which is why the engine stays paused."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            finalize_layerwise_reload(self.model_runner.get_model(), self.vllm_config.model_config)

    def _finish_reload(self, started: float) -> dict[str, float]:
        loaded = time.perf_counter()
        self._repack_tied_head()
        return {"reload_seconds": loaded - started, "repack_seconds": time.perf_counter() - loaded}

    def _repack_tied_head(self) -> None:
        model = self.model_runner.get_model()
        head = getattr(model, "lm_head", None)
        weight = getattr(head, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.is_meta:
            return
        # The CPU build packs each GEMM weight into a private copy after loading. reload_weights
        # re-packs the layers it loaded, but a head tied to the embedding has no tensor in the
        # checkpoint, so its packed copy kept the old embedding (logits from stale weights).
        # Re-running its post-load step re-packs from the shared, updated tensor (no-op on GPU).
        tied = any(
            m is not head and isinstance(getattr(m, "weight", None), torch.Tensor)
            and m.weight.data_ptr() == weight.data_ptr()
            for m in model.modules()
        )
        if tied:
            head.quant_method.process_weights_after_loading(head)
