"""Inside the engine process: a version's buckets as one stream of (name, tensor), read as they arrive.

Tensors are views of the memory-mapped file (safetensors maps it; nothing is copied until the engine's
weight loaders copy into the parameters), so the reader adds no copy of its own. A consumed file is
unlinked right after it is opened: its pages go back once the loader drops the last view, which bounds a
staged feed to about one bucket on this side.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import torch

from rollouts.engines.base import BucketFeed


class BucketLoadError(RuntimeError):
    """A bucket of a version is missing, late, corrupt or not what the manifest says."""


def wait_for_bucket(feed: BucketFeed, index: int) -> None:
    """Return once bucket ``index`` exists; raise BucketLoadError when the feed aborts or ``wait_s`` runs out."""
    path, total = Path(feed.paths[index]), len(feed.paths)
    if path.exists():
        return
    if not feed.consume:  # the learner's own files are all written before the version is published
        raise BucketLoadError(f"bucket {index + 1} of {total} of version {feed.version} is missing: {path} "
                              "(the learner's exported weights are gone: a newer export or a lost learner)")
    deadline, pause = time.monotonic() + feed.wait_s, 0.001
    while not path.exists():
        if feed.abort_path and os.path.exists(feed.abort_path):
            reason = Path(feed.abort_path).read_text(errors="replace").strip()
            raise BucketLoadError(f"bucket {index + 1} of {total} of version {feed.version} will not arrive: "
                                  f"{reason}")
        if time.monotonic() > deadline:
            raise BucketLoadError(f"bucket {index + 1} of {total} of version {feed.version} did not arrive at "
                                  f"{path} within {feed.wait_s:.0f}s (rollout.weight_sync_timeout_s)")
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def read_bucket(feed: BucketFeed, index: int) -> list[tuple[str, torch.Tensor]]:
    """Bucket ``index``'s tensors in load order, as views of its mapped file; a consumed file is unlinked."""
    from safetensors import safe_open

    path, expected = feed.paths[index], feed.names[index]
    try:
        with safe_open(path, framework="pt") as f:
            found = set(f.keys())
            if found != set(expected):
                raise BucketLoadError(
                    f"bucket {index + 1} of {len(feed.paths)} of version {feed.version} ({path}) holds "
                    f"{sorted(found ^ set(expected))[:5]} unlike its manifest ({len(found)} tensors, expected "
                    f"{len(expected)})")
            tensors = [(name, f.get_tensor(name)) for name in expected]
    except BucketLoadError:
        raise
    except Exception as exc:  # a truncated or corrupt file: say which bucket of which version
        raise BucketLoadError(f"bucket {index + 1} of {len(feed.paths)} of version {feed.version} ({path}) "
                              f"cannot be read: {exc}") from exc
    finally:
        if feed.consume and os.path.exists(path):
            os.unlink(path)
    return tensors


def iter_bucket_tensors(feed: BucketFeed) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the version, bucket after bucket, each bucket read once it has arrived."""
    for index in range(len(feed.paths)):
        wait_for_bucket(feed, index)
        tensors = read_bucket(feed, index)
        while tensors:  # hand each view over and drop ours, so the file's pages go once the loader is done
            yield tensors.pop(0)
