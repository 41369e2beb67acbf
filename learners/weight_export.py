"""The learner's side of the bucket transport: each exported version as safetensors buckets in RAM on its node.

Only the newest version is kept (the driver lands one publication before it exports the next), so the
node holds one copy of the model, as the single Ray object of the files transport did, and nothing is
serialised in between: each bucket goes from the parameters (gathered per bucket under ZeRO-3) straight
into its file. Engines on the node read those files in place; engines elsewhere fetch them bucket by bucket.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Sequence

import torch

from areal.ram_dirs import OwnedDir, check_room, remove_orphans
from areal.weight_sync import Bucket, WeightManifest, bucket_file, plan_buckets

FAMILY = "areal-weights"  # directories of this family left by dead learners are removed by the next one

TensorsOf = Callable[[list[str]], dict[str, torch.Tensor]]  # names -> CPU tensors of those names


class BucketExporter:
    """One learner process's exported weights: ``<root>/areal-weights-pid<PID>-*/v<version>/bucket-*.safetensors``."""

    def __init__(self, bound_bytes: int, root: str | Path = "", node_id: str = ""):
        self.bound_bytes, self.node_id = bound_bytes, node_id
        self.dir = OwnedDir(FAMILY, root=root)

    def export(self, version: int, sizes: Sequence[tuple[str, int]], tensors_of: TensorsOf) -> WeightManifest:
        """Write ``version`` (``sizes``: (name, bytes) in load order) bucket by bucket, asking ``tensors_of``
        for one bucket's tensors at a time; the previous version is deleted first. Readers never see a
        partial version: it is written beside its final name, then renamed."""
        for old in self.dir.path.iterdir():
            shutil.rmtree(old, ignore_errors=True)
        # a learner killed for a restart may still have been alive when this one started
        remove_orphans(self.dir.path.parent, FAMILY)
        target = self.dir.path / f"v{version:06d}"
        partial = self.dir.path / f".v{version:06d}.partial"
        partial.mkdir()
        check_room(partial, sum(n for _, n in sizes), f"weights version {version} on the learner's node")
        nbytes = dict(sizes)
        buckets = []
        for index, names in enumerate(plan_buckets(sizes, self.bound_bytes)):
            tensors = tensors_of(names)
            missing = set(names) - set(tensors)
            if missing:
                raise RuntimeError(f"weight export of version {version}: no tensors for {sorted(missing)}")
            save_bucket(partial / bucket_file(index), {n: tensors[n] for n in names})
            buckets.append(Bucket(bucket_file(index), tuple(names), sum(nbytes[n] for n in names)))
            del tensors  # a gathered (ZeRO-3) or device-copied bucket is freed before the next one
        partial.rename(target)
        return WeightManifest(version, str(target), self.node_id, self.bound_bytes, tuple(buckets))

    def remove(self) -> None:
        self.dir.remove()


def save_bucket(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """One bucket file. safetensors writes each tensor's bytes from its own memory: no serialised copy."""
    from safetensors.torch import save_file

    save_file({n: t.detach().contiguous() for n, t in tensors.items()}, str(path), metadata={"format": "pt"})
