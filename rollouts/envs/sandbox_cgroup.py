"""Per-run cgroups of the sandbox: one memory and one task bound over all of a run's processes (docs/sandbox.md).

Rlimits bound each process alone, so a run of many processes, or one that parks memory in the kernel (tmpfs
pages, socket buffers), could hold far more than ``memory_mb``. Where this process may create cgroups, every
run gets a leaf of its own below this process's cgroup: ``memory`` (no swap) and ``pids`` limits set before
the program starts, the host moves the sandbox's init into it before the init may fork the program, and the
leaf is removed after the run. cgroup v2 is used when this process's cgroup already hands the memory and pids
controllers to its children, else v1's ``memory`` and ``pids`` hierarchies; with neither writable the sandbox runs with
per-process limits only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

LEAF_PREFIX = "areal-sandbox-"
CONTROLLERS = ("memory", "pids")
REMOVE_TIMEOUT_S = 2.0


class CgroupSetupError(OSError):
    """A per-run cgroup could not be created or limited on a tree that passed detection."""


@dataclass(frozen=True)
class CgroupTree:
    """Where this process creates per-run cgroups: one v2 directory, or v1's memory and pids directories."""

    version: Literal[1, 2]
    bases: dict[str, str]
    """Name of the mount inside the sandbox's /sys/fs/cgroup ("" on v2, "memory" and "pids" on v1) -> this
    process's own cgroup directory in that hierarchy, under which each run's leaf is created."""
    swap_limit: bool
    """Whether the memory controller can forbid swap (v1 memory.memsw.*, v2 memory.swap.max: swap accounting on)."""

    def limit_files(self, memory_bytes: int, tasks: int) -> dict[str, int]:
        """Each limit file of a run's cgroup (path under the sandbox's /sys/fs/cgroup) and its value, in write order."""
        if self.version == 2:
            files = {"memory.max": memory_bytes, "memory.swap.max": 0, "pids.max": tasks}
            return files if self.swap_limit else {k: v for k, v in files.items() if k != "memory.swap.max"}
        files = {"memory/memory.limit_in_bytes": memory_bytes}
        if self.swap_limit:  # memory + swap; written after the memory limit, which it may not undercut
            files["memory/memory.memsw.limit_in_bytes"] = memory_bytes
        files["pids/pids.max"] = tasks
        return files

    def procs_files(self) -> list[str]:
        """The cgroup.procs of each mount, relative to the sandbox's /sys/fs/cgroup."""
        return [os.path.join(name, "cgroup.procs") for name in self.bases]


@dataclass(frozen=True)
class RunCgroup:
    """One run's leaf in each hierarchy, created with its limits; ``remove`` once the run has ended."""

    tree: CgroupTree
    leaves: dict[str, str]
    """Mount name inside the sandbox (as ``CgroupTree.bases``) -> the leaf's directory on the host."""
    limits: dict[str, int]

    def host_path(self, relative: str) -> str:
        """The host path of a file named as the sandbox sees it under /sys/fs/cgroup ("memory/memory.max_...")."""
        mount, _, name = relative.rpartition("/")
        return os.path.join(self.leaves[mount], name)

    def boot_spec(self) -> dict:
        """What the sandbox's init needs: the leaf it must find itself in, the leaves it mounts read-only."""
        return {"leaf": os.path.basename(next(iter(self.leaves.values()))), "mounts": self.leaves}

    def join(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into this run's leaf in every hierarchy."""
        for procs in self.tree.procs_files():
            _write(self.host_path(procs), pid)

    def oom_kills(self) -> int:
        """Processes of the run the kernel killed for reaching the memory limit."""
        events = "memory.events" if self.tree.version == 2 else "memory.oom_control"
        text = Path(self.host_path(os.path.join(self._memory_mount(), events))).read_text()
        counts = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        return int(counts.get("oom_kill", 0))

    def peak_bytes(self) -> int:
        """The most memory the run's processes held at once, kernel memory and tmpfs pages included."""
        peak = "memory.peak" if self.tree.version == 2 else "memory.max_usage_in_bytes"
        return int(Path(self.host_path(os.path.join(self._memory_mount(), peak))).read_text())

    def _memory_mount(self) -> str:
        return "" if self.tree.version == 2 else "memory"

    async def remove(self) -> None:
        """Remove the leaves; the run's last processes may take a moment to leave them after being reaped."""
        deadline = asyncio.get_running_loop().time() + REMOVE_TIMEOUT_S
        for leaf in self.leaves.values():
            while True:
                try:
                    os.rmdir(leaf)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if asyncio.get_running_loop().time() > deadline:
                        log.warning("sandbox cgroup %s not removed after %.0f s: %s", leaf, REMOVE_TIMEOUT_S, e)
                        break
                    await asyncio.sleep(0.01)


def create_run_cgroup(tree: CgroupTree, memory_bytes: int, tasks: int) -> RunCgroup:
    """Make a fresh leaf under each base and write its limits; raises ``CgroupSetupError`` naming the file."""
    name = f"{LEAF_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    leaves = {}
    run = RunCgroup(tree, leaves, tree.limit_files(memory_bytes, tasks))
    try:
        for mount, base in tree.bases.items():
            os.mkdir(leaf := os.path.join(base, name), 0o755)
            leaves[mount] = leaf
        for relative, value in run.limits.items():
            _write(run.host_path(relative), value)
    except OSError as e:
        for leaf in leaves.values():
            try:
                os.rmdir(leaf)
            except OSError:
                pass
        raise CgroupSetupError(e.errno, f"per-run cgroup under {list(tree.bases.values())}: {e}") from e
    return run


def find_cgroup_tree(mountinfo: str | None = None, own_cgroups: str | None = None) -> CgroupTree | None:
    """The cgroup tree this process may create per-run cgroups in, or None (logged, with the reason).

    ``mountinfo`` and ``own_cgroups`` default to this process's /proc/self/mountinfo and /proc/self/cgroup."""
    mountinfo = Path("/proc/self/mountinfo").read_text() if mountinfo is None else mountinfo
    own_cgroups = Path("/proc/self/cgroup").read_text() if own_cgroups is None else own_cgroups
    dirs = _own_cgroup_dirs(mountinfo, own_cgroups)
    reasons = []
    if "" in dirs:
        tree = _try_v2(dirs[""], reasons)
        if tree:
            return tree
    if all(c in dirs for c in CONTROLLERS):
        tree = _try_v1(dirs, reasons)
        if tree:
            return tree
    else:
        reasons.append("no cgroup v1 memory and pids hierarchies are mounted")
    log.warning("sandbox: no writable cgroup tree (%s); each run's memory and process count are bounded per "
                "process only (docs/sandbox.md, 'Without cgroups')", "; ".join(reasons))
    return None


def _own_cgroup_dirs(mountinfo: str, own_cgroups: str) -> dict[str, str]:
    """Controller ("" for v2) -> this process's cgroup directory, for each mounted hierarchy that shows it."""
    own = {}
    for line in own_cgroups.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path
    dirs = {}
    for line in mountinfo.splitlines():
        fields, _, tail = line.partition(" - ")
        root, mountpoint = fields.split()[3:5]
        fstype, _, options = tail.split()[:3]
        if fstype == "cgroup2":
            controllers = [""]
        elif fstype == "cgroup":
            controllers = [c for c in options.split(",") if c in CONTROLLERS]
        else:
            continue
        for controller in controllers:
            path = own.get(controller)
            # a mount of a subtree (a container's) shows our cgroup only if it lies inside that subtree
            if controller in dirs or path is None or not (path == root or path.startswith(root.rstrip("/") + "/")):
                continue
            dirs[controller] = os.path.join(mountpoint, path[len(root):].lstrip("/")).rstrip("/")
    return dirs


def _try_v2(base: str, reasons: list[str]) -> CgroupTree | None:
    try:
        available = Path(base, "cgroup.controllers").read_text().split()
        if not all(c in available for c in CONTROLLERS):
            reasons.append(f"cgroup v2 at {base} lacks the memory or pids controller (has {available})")
            return None
        delegated = Path(base, "cgroup.subtree_control").read_text().split()
        if not all(c in delegated for c in CONTROLLERS):
            # enabling them is the host's decision, and v2 allows it only in a cgroup without processes of its
            # own (or the root), which this process's cgroup, holding this process, rarely is
            reasons.append(f"cgroup v2 at {base} does not hand memory and pids to its children "
                           f"(cgroup.subtree_control: {delegated})")
            return None
        swap = _try_leaf(CgroupTree(2, {"": base}, swap_limit=False), "memory.swap.max")
    except OSError as e:
        reasons.append(f"cgroup v2 at {base}: {e}")
        return None
    return CgroupTree(2, {"": base}, swap_limit=swap)


def _try_v1(dirs: dict[str, str], reasons: list[str]) -> CgroupTree | None:
    bases = {c: dirs[c] for c in CONTROLLERS}
    try:
        swap = _try_leaf(CgroupTree(1, bases, swap_limit=False), "memory/memory.memsw.limit_in_bytes")
    except OSError as e:
        reasons.append(f"cgroup v1 memory at {bases['memory']}, pids at {bases['pids']}: {e}")
        return None
    return CgroupTree(1, bases, swap_limit=swap)


def _try_leaf(tree: CgroupTree, swap_file: str) -> bool:
    """Create and remove one limited leaf, so a tree is used only once it has been seen to work; True if the
    leaf had ``swap_file`` (swap accounting is on). Also removes leaves left by processes that died mid-run."""
    for base in tree.bases.values():
        for entry in os.scandir(base):
            owner = entry.name[len(LEAF_PREFIX):].split("-")[0]
            if entry.name.startswith(LEAF_PREFIX) and owner.isdigit() and not _alive(int(owner)):
                try:
                    os.rmdir(entry.path)
                except OSError:
                    pass  # still in use after all (a recycled pid): harmless, it stays
    run = create_run_cgroup(tree, 1 << 30, 64)
    swap = os.path.exists(run.host_path(swap_file))
    for leaf in run.leaves.values():
        os.rmdir(leaf)
    return swap


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _write(path: str, value: object) -> None:
    with open(path, "w") as f:
        f.write(str(value))
