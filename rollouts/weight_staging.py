"""Where a rollout worker writes the weight files it receives before its engine loads them.

Staging lives in RAM (/dev/shm) by default: a 7B model is ~15 GB there for as long as the directory
exists, so it must not outlive its actor. The directory carries the owning process's PID in its name;
it is removed when the actor closes or its process exits, and a new actor on the node removes the ones
left by processes that no longer exist (an actor killed with SIGKILL runs no exit handler).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from pathlib import Path

PREFIX = "areal-rollout"
_OWNED = re.compile(rf"^{PREFIX}\d+-pid(\d+)-")
GB = 2**30


class StagingSpaceError(OSError):
    """Not enough free space where weights are staged."""


def default_root() -> Path:
    """/dev/shm when this machine has it (weights written there never touch a disk), else the temp dir."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_orphans(root: Path) -> list[Path]:
    """Remove this user's staging directories under ``root`` whose owning process is gone; returns them."""
    removed = []
    for path in root.glob(f"{PREFIX}*-pid*-*"):
        match = _OWNED.match(path.name)
        if (match and path.is_dir() and path.stat().st_uid == os.getuid()
                and not process_exists(int(match.group(1)))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def check_room(directory: Path, nbytes: int, what: str) -> None:
    """Raise StagingSpaceError, saying how much is needed, unless ``nbytes`` more fit in ``directory``."""
    free = shutil.disk_usage(directory).free
    if nbytes > free:
        raise StagingSpaceError(
            f"staging {what} needs {nbytes / GB:.2f} GB in {directory}, which has {free / GB:.2f} GB free: "
            "enlarge it (e.g. docker --shm-size) or point rollout.staging_dir at a larger local directory")


class WeightStaging:
    """One actor's staging directory: created on construction, removed by ``remove`` or at process exit."""

    def __init__(self, rank: int, root: str | Path = ""):
        root = Path(root) if root else default_root()
        root.mkdir(parents=True, exist_ok=True)
        self.orphans_removed = remove_orphans(root)
        self.path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{rank}-pid{os.getpid()}-", dir=root))
        atexit.register(self.remove)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
