"""The weight-sync protocol between learners (senders) and rollout engines (receivers).

A policy version travels as **buckets**: safetensors files of whole tensors in state-dict order, each at
most ``rollout.weight_bucket_mb`` (a single tensor larger than that travels alone: vLLM's weight loaders
take whole tensors, so splitting one would only move the full-size buffer to the engine). A
``WeightManifest`` names the files, the tensors in each and the version; it is small, so it travels by
value while the bytes stay where the learner wrote them. Which **transport** carries a version is chosen
here from what both sides can do (``choose_transport``); the driver only ever says "publish version v".

Pure Python: no Ray, vLLM or DeepSpeed (the learner, the rollout actor and the engine process share it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

TRANSPORTS = ("auto", "buckets", "files", "native")
NATIVE_BACKENDS = ("nccl", "ipc")  # vLLM weight-transfer engines: NCCL broadcast, CUDA IPC on a shared GPU
MB = 2**20


class WeightsUnavailable(RuntimeError):
    """The bytes of an exported version cannot be read any more (its learner, or its learner's node, is gone):
    the learners must export again; the engine that tried is not at fault."""


@dataclass(frozen=True)
class Bucket:
    """One bucket file: the tensors it holds, in load order, and its payload size."""

    file: str  # file name inside the manifest's directory
    names: tuple[str, ...]
    nbytes: int  # tensor bytes (the safetensors header adds a few KB)

    def __post_init__(self):
        if not self.names:
            raise ValueError(f"bucket {self.file}: holds no tensors")
        if "/" in self.file or self.file.startswith("."):
            raise ValueError(f"bucket file name {self.file!r}: expected a plain name inside the version directory")


@dataclass(frozen=True)
class WeightManifest:
    """Where one exported version lies: ``directory`` on the Ray node ``node_id`` ("" outside Ray)."""

    version: int
    directory: str
    node_id: str
    bound_bytes: int
    buckets: tuple[Bucket, ...]
    # JSON of PEFT's adapter_config when the buckets hold LoRA adapters alone (learner.lora.sync=adapter): the
    # engine serves them as a LoRA request on its unchanged base model instead of reloading weights in place
    adapter_config: str = ""

    def __post_init__(self):
        if not self.buckets:
            raise ValueError(f"weight manifest of version {self.version}: no buckets")
        seen: set[str] = set()
        for bucket in self.buckets:
            # the bound holds for every bucket but one holding a single oversized tensor
            if bucket.nbytes > self.bound_bytes and len(bucket.names) > 1:
                raise ValueError(f"weight manifest of version {self.version}: bucket {bucket.file} holds "
                                 f"{bucket.nbytes} bytes in {len(bucket.names)} tensors, over the bound of "
                                 f"{self.bound_bytes} (rollout.weight_bucket_mb)")
            repeated = seen.intersection(bucket.names)
            if repeated:
                raise ValueError(f"weight manifest of version {self.version}: {sorted(repeated)} in two buckets")
            seen.update(bucket.names)

    @property
    def total_bytes(self) -> int:
        return sum(b.nbytes for b in self.buckets)

    def paths(self) -> tuple[str, ...]:
        return tuple(f"{self.directory}/{b.file}" for b in self.buckets)


@dataclass(frozen=True)
class NativeOffer:
    """A version an engine can pull through vLLM's native weight transfer: ``sender`` (the exporting learner's
    handle) sends it over ``backend`` when asked; ``manifest`` (its buckets) serves engines built without it."""

    manifest: WeightManifest
    backend: str  # one of NATIVE_BACKENDS
    sender: object

    @property
    def version(self) -> int:
        return self.manifest.version


def bucket_file(index: int) -> str:
    """The file name of bucket ``index`` (sorts in load order)."""
    return f"bucket-{index:05d}.safetensors"


def plan_buckets(sizes: Sequence[tuple[str, int]], bound_bytes: int) -> list[list[str]]:
    """Split (name, bytes) pairs, kept in order, into runs of at most ``bound_bytes``; a tensor larger
    than the bound forms a bucket of its own. Order is kept so each decoder layer's tensors arrive
    together (vLLM's layerwise reload buffers a layer until it is complete)."""
    if bound_bytes <= 0:
        raise ValueError(f"bucket bound {bound_bytes} bytes; expected a positive size (rollout.weight_bucket_mb)")
    buckets: list[list[str]] = []
    current: list[str] = []
    filled = 0
    for name, nbytes in sizes:
        if current and filled + nbytes > bound_bytes:
            buckets.append(current)
            current, filled = [], 0
        current.append(name)
        filled += nbytes
    if current:
        buckets.append(current)
    return buckets


# -- which transport ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TransportCaps:
    """What the two ends of a weight sync can do, as found at run time."""

    text_engine: bool  # vLLM; the diffusion sampler only loads one file
    learner_on_gpu: bool
    engine_on_gpu: bool
    shared_gpu: bool  # learner and engine on the same GPU (CUDA IPC instead of NCCL)
    native_backends: frozenset[str] = frozenset()  # vLLM weight-transfer engines found installed
    native_missing: str = ""  # why none were found (what the detection saw)


@dataclass(frozen=True)
class TransportChoice:
    """The transport a run uses, the native backend when it is "native", and why it was chosen."""

    transport: str  # "files" | "buckets" | "native"
    backend: str
    reason: str


def native_backend(caps: TransportCaps) -> tuple[str, str]:
    """(vLLM backend to use, "") when a native transfer can run; ("", why not) otherwise."""
    if not caps.text_engine:
        return "", "the diffusion sampler has no native weight transfer"
    if not (caps.learner_on_gpu and caps.engine_on_gpu):
        where = [side for side, gpu in (("learner", caps.learner_on_gpu), ("engine", caps.engine_on_gpu)) if not gpu]
        return "", f"native transfer moves CUDA tensors, and the {' and '.join(where)} run(s) on CPU"
    wanted = "ipc" if caps.shared_gpu else "nccl"
    if wanted not in caps.native_backends:
        found = ", ".join(sorted(caps.native_backends)) or "none"
        detail = f" ({caps.native_missing})" if caps.native_missing else ""
        return "", f"the installed vLLM has no {wanted!r} weight-transfer engine (found: {found}){detail}"
    return wanted, ""


def choose_transport(requested: str, caps: TransportCaps) -> TransportChoice:
    """The transport for ``rollout.weight_transport = requested``. "auto" takes the fastest that both sides
    support: native (GPU) > buckets > files (the only one the diffusion sampler reads). An explicit choice
    that cannot run is an error naming the key, never a silent substitute."""
    if requested not in TRANSPORTS:
        raise ValueError(f"config error: rollout.weight_transport = {requested!r}; expected one of "
                         f"{', '.join(TRANSPORTS)}")
    backend, why_not = native_backend(caps)
    if requested == "native":
        if not backend:
            raise ValueError(f"config error: rollout.weight_transport = 'native' cannot run: {why_not}; "
                             "use 'auto' (falls back to buckets) or 'buckets'")
        return TransportChoice("native", backend, "requested")
    if requested == "buckets" and not caps.text_engine:
        raise ValueError("config error: rollout.weight_transport = 'buckets' with engine.type=diffusers, whose "
                         "sampler loads one file; use 'auto' or 'files'")
    if requested != "auto":
        return TransportChoice(requested, "", "requested")
    if backend:
        return TransportChoice("native", backend, f"auto: vLLM {backend} weight transfer between GPUs")
    if not caps.text_engine:
        return TransportChoice("files", "", "auto: the diffusion sampler loads one file")
    return TransportChoice("buckets", "", f"auto: {why_not}")
