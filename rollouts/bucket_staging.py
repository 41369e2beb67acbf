"""A rollout worker's side of buckets from a learner on another node: fetched one at a time, staged for the engine.

The engine reads the staged files as they appear and deletes each once opened (``engines.bucket_reader``);
this writes bucket k+1 only after bucket k is gone, so at most two buckets are staged at once (the one
loading, the one waiting), while the fetch of the next overlaps the load of the current one.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Awaitable, Callable

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
