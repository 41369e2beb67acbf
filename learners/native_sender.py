"""The learner's side of vLLM's native weight transfer (NCCL broadcast; CUDA IPC on a shared GPU).

UNVERIFIED: written against vLLM 0.32's ``vllm.distributed.weight_transfer`` API and never run (the machines
this was built on have no GPU and no CUDA build of vLLM); docs/weight_sync.md says how to check it.

The source is the version's exported buckets (``weight_export``), not the live parameters: training goes on in
the learner's other thread while a send runs, and the buckets hold exactly the version offered. Each tensor is
read from its mapped file and copied to this learner's GPU as vLLM's trainer-side engine sends it (packed into
its bounded buffers), so the GPU never holds a second copy of the model. vLLM's engine drives the round trip
(start, update, finish) through the ``client`` it is given: one per engine and version.
"""

from __future__ import annotations

import socket

import torch

from areal.weight_sync import WeightManifest


def bucket_source(manifest: WeightManifest, device: torch.device):
    """A vLLM ``WeightSource`` over ``manifest``'s buckets: metadata from the mapped files, tensors on ``device``."""
    from safetensors import safe_open
    from vllm.distributed.weight_transfer import ParamMeta, WeightSource

    class BucketSource(WeightSource):
        def metadata(self) -> list:
            metas = []
            for path, bucket in zip(manifest.paths(), manifest.buckets):
                with safe_open(path, framework="pt") as f:  # mapped: reading shapes copies nothing
                    for name in bucket.names:
                        view = f.get_tensor(name)
                        metas.append(ParamMeta(name, view.dtype, tuple(view.shape)))
            return metas

        def __iter__(self):
            for path, bucket in zip(manifest.paths(), manifest.buckets):
                with safe_open(path, framework="pt") as f:
                    for name in bucket.names:
                        yield name, f.get_tensor(name).to(device, non_blocking=True)

    return BucketSource()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class NativeSender:
    """One trainer-side vLLM weight-transfer engine per receiving engine (``key``), set up on first use."""

    def __init__(self, backend: str, address: str):
        self.backend, self.address = backend, address
        self.engines: dict[str, object] = {}

    def init_info(self):
        """Trainer init info: a two-rank NCCL group (this learner, one engine), or CUDA IPC packed buffers."""
        if self.backend == "nccl":
            from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

            return NCCLTrainerInitInfo(master_address=self.address, master_port=free_port(), world_size=2, rank=0)
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        return IPCTrainerInitInfo(rank=0, packed=True)

    def send(self, manifest: WeightManifest, key: str, client) -> None:
        """Send ``manifest``'s version to the engine behind ``client`` (start, update, finish on its side)."""
        from vllm.distributed.weight_transfer import WeightTransferTrainerFactory

        source = bucket_source(manifest, torch.device("cuda", torch.cuda.current_device()))
        engine = self.engines.get(key)
        try:
            if engine is None:
                engine = WeightTransferTrainerFactory.trainer_init(self.init_info(), client=client, source=source)
                self.engines[key] = engine
            engine.client, engine.source = client, source  # this round's version and bytes
            engine.send_weights()
        except BaseException:
            self.drop(key)  # its communicator is unusable after a failed send; the next one starts afresh
            raise

    def drop(self, key: str) -> None:
        engine = self.engines.pop(key, None)
        if engine is not None:
            engine.shutdown()
