"""Where a rollout worker writes the weight files it receives before its engine loads them.

Staging lives in RAM (/dev/shm) by default: a 7B model is ~15 GB there for as long as the directory
exists, so it must not outlive its actor. The directory carries the owning process's PID in its name;
it is removed when the actor closes or its process exits, and a new actor on the node removes the ones
left by processes that no longer exist (``areal.ram_dirs``).
"""

from __future__ import annotations

import shutil  # noqa: F401 - tests patch shutil.disk_usage through this module
from pathlib import Path

from areal.ram_dirs import GB, OwnedDir, StagingSpaceError, check_room, default_root, process_exists

__all__ = ["GB", "PREFIX", "StagingSpaceError", "WeightStaging", "check_room", "default_root", "process_exists"]

PREFIX = "areal-rollout"


class WeightStaging(OwnedDir):
    """One rollout actor's staging directory: created on construction, removed by ``remove`` or at exit."""

    def __init__(self, rank: int, root: str | Path = ""):
        super().__init__(PREFIX, str(rank), root)
