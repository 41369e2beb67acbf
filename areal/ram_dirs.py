"""Directories in RAM (/dev/shm) owned by one process: weights staged or exported there must not outlive it.

A directory carries its owner's PID in its name (``<family><tag>-pid<PID>-<random>``); it is removed when
its owner removes it or exits, and the next owner of the same family on the node removes the ones whose
process no longer exists (a process killed with SIGKILL runs no exit handler).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from pathlib import Path

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


def remove_orphans(root: Path, family: str) -> list[Path]:
    """Remove this user's ``family`` directories under ``root`` whose owning process is gone; returns them."""
    owned = re.compile(rf"^{re.escape(family)}[^/]*?-pid(\d+)-")
    removed = []
    for path in root.glob(f"{family}*-pid*-*"):
        match = owned.match(path.name)
        if (match and path.is_dir() and path.stat().st_uid == os.getuid()
                and not process_exists(int(match.group(1)))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def check_room(directory: Path, nbytes: int, what: str, key: str = "rollout.staging_dir") -> None:
    """Raise StagingSpaceError, saying how much is needed, unless ``nbytes`` more fit in ``directory``."""
    free = shutil.disk_usage(directory).free
    if nbytes > free:
        raise StagingSpaceError(
            f"staging {what} needs {nbytes / GB:.2f} GB in {directory}, which has {free / GB:.2f} GB free: "
            f"enlarge it (e.g. docker --shm-size) or point {key} at a larger local directory")


class OwnedDir:
    """A fresh directory named after this process: created on construction, removed by ``remove`` or at exit;
    directories of the same ``family`` left by dead processes are removed first."""

    def __init__(self, family: str, tag: str = "", root: str | Path = ""):
        root = Path(root) if root else default_root()
        root.mkdir(parents=True, exist_ok=True)
        self.orphans_removed = remove_orphans(root, family)
        self.path = Path(tempfile.mkdtemp(prefix=f"{family}{tag}-pid{os.getpid()}-", dir=root))
        atexit.register(self.remove)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
