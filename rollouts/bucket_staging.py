"""A rollout worker's side of buckets from a learner on another node: fetched one at a time, staged for the engine.
Also the one folder a version of LoRA adapters becomes, wherever its buckets lie (``stage_adapter``).

The engine reads the staged files as they appear and deletes each once opened (``engines.bucket_reader``);
this writes bucket k+1 only after bucket k is gone, so at most two buckets are staged at once (the one
loading, the one waiting), while the fetch of the next overlaps the load of the current one.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Awaitable, Callable

from areal.models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from areal.ram_dirs import check_room
from areal.weight_sync import WeightManifest
from rollouts.engines.base import BucketFeed

# index -> the bucket file's bytes (a bytes-like object: bytes, memoryview, or a uint8 numpy array)
FetchBucket = Callable[[int], Awaitable[object]]
ABORT_FILE = "ABORTED"


def staged_feed(manifest: WeightManifest, directory: Path, wait_s: float) -> BucketFeed:
    """The feed an engine reads while ``stage_buckets`` fills ``directory``."""
    return BucketFeed(tuple(str(directory / b.file) for b in manifest.buckets),
                      tuple(b.names for b in manifest.buckets),
                      manifest.version, consume=True, abort_path=str(directory / ABORT_FILE), wait_s=wait_s)


def write_bucket(path: Path, data) -> None:
    """Write ``data`` beside ``path``, then rename it into place: the engine never sees a partial bucket."""
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as out:
        out.write(memoryview(data).cast("B"))
    os.replace(partial, path)


async def stage_buckets(manifest: WeightManifest, fetch: FetchBucket, directory: Path) -> None:
    """Fetch and stage every bucket of ``manifest`` in order into ``directory``. On any failure the reason is
    written to the abort file (the engine stops waiting and says why) and the error is raised."""
    try:
        largest = max(b.nbytes for b in manifest.buckets)
        check_room(directory, 2 * largest, f"two weight buckets of version {manifest.version}")
        previous: Path | None = None
        for index, bucket in enumerate(manifest.buckets):
            data = await fetch(index)  # overlaps the engine's load of the previous bucket
            while previous is not None and previous.exists():  # the engine has not opened it yet
                await asyncio.sleep(0.002)
            previous = directory / bucket.file
            await asyncio.to_thread(write_bucket, previous, data)
            del data
    except BaseException as exc:
        (directory / ABORT_FILE).write_text(f"staging failed: {type(exc).__name__}: {exc}")
        raise


async def stage_adapter(manifest: WeightManifest, fetch: FetchBucket | None, directory: Path) -> Path:
    """The adapters of ``manifest`` (``adapter_config`` set) as one PEFT folder at ``directory``, the layout vLLM
    loads a LoRA request from: its buckets read in place, or through ``fetch`` from the learner's node. Adapters
    are a few MB, so they are joined in memory."""
    from safetensors.torch import load, load_file, save_file

    tensors = {}
    for index, path in enumerate(manifest.paths()):
        tensors.update(load(bytes(memoryview(await fetch(index)).cast("B"))) if fetch else load_file(path))
    check_room(directory.parent, manifest.total_bytes, f"LoRA adapters of version {manifest.version}")
    partial = directory.with_name(f".{directory.name}.partial")
    partial.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(partial / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (partial / ADAPTER_CONFIG).write_text(json.dumps(json.loads(manifest.adapter_config), indent=2))
    os.replace(partial, directory)
    return directory
