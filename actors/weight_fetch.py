"""How a rollout actor reaches exported weight buckets: in place on the learner's node, else over Ray.

A bucket on another node is read by a task pinned to that node and reaches this one through the object
stores (a numpy array: the reader here gets a zero-copy view of the local copy).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from areal.weight_sync import WeightManifest, WeightsUnavailable
from rollouts.bucket_staging import FetchBucket


@ray.remote(num_cpus=0, max_retries=0)
def read_bucket_file(path: str) -> np.ndarray:
    """On the learner's node: one bucket file's bytes."""
    return np.fromfile(path, dtype=np.uint8)


def bucket_fetcher(manifest: WeightManifest) -> FetchBucket | None:
    """None when this process can read ``manifest``'s files where they lie (same Ray node, files present);
    else an async fetch of bucket i that raises ``WeightsUnavailable`` once the files or their node are gone."""
    here = ray.get_runtime_context().get_node_id()
    if not manifest.node_id or (manifest.node_id == here and Path(manifest.paths()[0]).exists()):
        return None  # read in place (files that are gone fail there, as WeightsUnavailable)
    strategy = NodeAffinitySchedulingStrategy(manifest.node_id, soft=False)
    paths = manifest.paths()

    async def fetch(index: int) -> np.ndarray:
        try:
            return await read_bucket_file.options(scheduling_strategy=strategy).remote(paths[index])
        except ray.exceptions.RayError as exc:
            raise WeightsUnavailable(f"bucket {index + 1} of {len(paths)} of weights version {manifest.version} "
                                     f"on node {manifest.node_id[:12]} cannot be read: {exc}") from exc

    return fetch
