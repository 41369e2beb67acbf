"""Run untrusted, model-written Python programs in Linux namespaces under hard limits (docs/sandbox.md).

Each run gets fresh mount, PID, network, IPC, UTS and cgroup namespaces (util-linux ``unshare``) and, where
this process may create cgroups, a cgroup of its own with a memory and a task limit (``sandbox_cgroup.py``);
inside, ``sandbox_boot.py`` builds a read-only root of the system directories and the interpreter only, with
a size-limited tmpfs as the working directory, and runs the program as an unprivileged uid with no
capabilities, no_new_privs, a seccomp filter and rlimits. The host enforces the wall clock by killing the
namespace's init, which takes every process in the namespace with it. Nothing runs until
``probe_isolation()`` has proved, with programs run inside, that the isolation holds; ``Sandbox(insecure=True)``
skips the namespaces and the probe (development only: rlimits and timeouts still apply).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from rollouts.envs.sandbox_capture import READ_CHUNK, capture, children_of, kill_group, kill_namespace
from rollouts.envs.sandbox_cgroup import CgroupSetupError, CgroupTree, RunCgroup, create_run_cgroup, find_cgroup_tree
from rollouts.envs.sandbox_probe import ProbeReport, check_isolation

SandboxStatus = Literal["ok", "error", "timeout", "memory", "output_limit"]

WORKDIR = "/sandbox"
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
# one host uid per concurrent sandbox: RLIMIT_NPROC counts processes per real uid across the whole host,
# so sandboxes sharing one uid (say 65534) would let one fork bomb stop every other sandbox from starting
UID_BASE, UID_SLOTS = 1_900_000_000, 1024
NESTED_UID = 65534  # without root there is one uid to map; inside a child user namespace it reads as nobody
PROGRAM_ENV = {"PATH": "/usr/bin:/bin", "HOME": WORKDIR, "TMPDIR": WORKDIR, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
BOOT = str(Path(__file__).with_name("sandbox_boot.py"))
MEMORY_ERROR = re.compile(rb"MemoryError|Cannot allocate memory|[Oo]ut of memory")
UNSHARE_KILL_NOTE = re.compile(rb"unshare: [^\n]*\n?\Z")
INIT_START_S = 5.0
MEMLOCK_BYTES = 64 << 10  # the kernel's usual default, set rather than inherited: no program here needs mlock


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits: every process of the program gets the per-process ones, the run's cgroup the totals."""

    cpu_seconds: int = 5
    """RLIMIT_CPU of each process: SIGXCPU at this many CPU seconds, SIGKILL one second later."""
    wall_seconds: float = 10.0
    """Wall clock from spawn, sandbox setup (~50 ms) included; then the whole namespace is killed."""
    memory_mb: int = 512
    """RLIMIT_AS of each process, in MiB: allocations beyond it fail (MemoryError in Python)."""
    max_processes: int = 32
    """RLIMIT_NPROC: processes and threads of the sandbox's uid, the program included."""
    max_file_mb: int = 16
    """RLIMIT_FSIZE: the largest file the program may write, in MiB."""
    max_output_bytes: int = 1 << 20
    """Cap on captured stdout and on captured stderr, each; past it the run is killed (status output_limit)."""
    tmpfs_mb: int = 64
    """Size of the tmpfs working directory, in MiB (it counts against host memory)."""
    total_memory_mb: int | None = None
    """Memory of all the run's processes together, in MiB: the run's cgroup limit (no swap), counting
    anonymous memory, tmpfs pages and kernel memory (socket buffers); past it the kernel kills the largest
    process. None: ``memory_mb + tmpfs_mb``, one process at its limit with a full work dir. Needs a writable
    cgroup tree; without one only the per-process limits hold (docs/sandbox.md)."""
    max_open_files: int = 256
    """RLIMIT_NOFILE of each process; it also caps the file descriptors in flight over Unix sockets."""

    def __post_init__(self):
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not (value is None and name == "total_memory_mb") and not value > 0:
                raise ValueError(f"SandboxLimits.{name}: got {value!r}, expected a positive number")

    @property
    def total_memory_bytes(self) -> int:
        """``total_memory_mb`` (or its default) in bytes."""
        mib = self.memory_mb + self.tmpfs_mb if self.total_memory_mb is None else self.total_memory_mb
        return mib << 20


@dataclass(frozen=True)
class SandboxResult:
    """How one run ended, with its captured (possibly truncated) output."""

    status: SandboxStatus
    """ok: exit 0; error: other exit or a signal; timeout: wall clock or CPU limit; memory: out of address
    space, or the run's cgroup reached ``total_memory_mb`` and a process was killed for it; output_limit:
    stdout or stderr passed ``max_output_bytes`` and the run was killed."""
    exit_code: int | None
    """The program's exit status, minus the signal number if a signal ended it, None if the host killed it."""
    stdout: str
    stderr: str
    wall_seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class SandboxUnavailableError(RuntimeError):
    """The isolation probe failed on this host, so the sandbox refuses to run code."""


class SandboxSetupError(RuntimeError):
    """The sandbox itself could not be built (a mount, a namespace): no program ran."""


class Sandbox:
    """Runs untrusted Python source under ``limits``; refuses unless the isolation probe passed.

    ``insecure=True`` is for development only: the program runs as you, on your filesystem and network,
    with only the rlimits, the wall clock and a temporary working directory.
    """

    def __init__(self, limits: SandboxLimits | None = None, *, insecure: bool = False):
        self.limits = limits or SandboxLimits()
        self.insecure = insecure

    async def run_async(self, source: str, stdin: str | bytes = b"") -> SandboxResult:
        """Run ``source`` with ``stdin``; safe to await many at once."""
        data = stdin.encode() if isinstance(stdin, str) else stdin
        if self.insecure:
            return await _run_insecure(source, data, self.limits)
        report = await probe_isolation_async()
        if not report.ok:
            raise SandboxUnavailableError(report.explain())
        return await _run_isolated(source, data, self.limits, _cgroups)

    def run(self, source: str, stdin: str | bytes = b"") -> SandboxResult:
        """Blocking ``run_async``, for code without an event loop."""
        return asyncio.run(self.run_async(source, stdin))


_probe_report: ProbeReport | None = None
_cgroups: CgroupTree | None = None  # the tree the cached probe ran with: every run uses the same
PROBE_LIMITS = SandboxLimits(cpu_seconds=5, wall_seconds=20.0, memory_mb=256, max_processes=8)


async def probe_isolation_async() -> ProbeReport:
    """Prove the isolation by running probe programs inside the sandbox.

    A probe that ran to completion (every check executed, passed or failed) is cached for the process. One that
    could not run (the sandbox could not be built, the probe program did not finish: causes that may pass, such
    as a failed fork under load) is not, so the next call probes again instead of failing every later run."""
    global _probe_report, _cgroups
    if _probe_report is not None:
        return _probe_report
    try:
        cgroups = find_cgroup_tree()
        expected = None if cgroups is None else {
            "limits": cgroups.limit_files(*_cgroup_bounds(PROBE_LIMITS)), "procs": cgroups.procs_files()}

        async def run(source: str, stdin: bytes) -> SandboxResult:
            return await _run_isolated(source, stdin, PROBE_LIMITS, cgroups)

        report = await check_isolation(run, _rlimits(PROBE_LIMITS), expected)
    except (SandboxSetupError, OSError) as e:
        return ProbeReport.setup_failed(f"{type(e).__name__}: {e}")
    if report.complete:
        _probe_report, _cgroups = report, cgroups
    return report


def probe_isolation() -> ProbeReport:
    """Blocking ``probe_isolation_async``."""
    return _probe_report or asyncio.run(probe_isolation_async())


def _rlimits(limits: SandboxLimits) -> dict[str, list[int]]:
    mib = 1 << 20
    return {
        "RLIMIT_CPU": [limits.cpu_seconds, limits.cpu_seconds + 1],
        "RLIMIT_AS": [limits.memory_mb * mib] * 2,
        "RLIMIT_NPROC": [limits.max_processes] * 2,
        "RLIMIT_FSIZE": [limits.max_file_mb * mib] * 2,
        "RLIMIT_CORE": [0, 0],
        "RLIMIT_NOFILE": [limits.max_open_files] * 2,
        "RLIMIT_MEMLOCK": [MEMLOCK_BYTES] * 2,
        "RLIMIT_MSGQUEUE": [0, 0],  # no POSIX message queue: its bytes count against no other limit
    }


def _cgroup_bounds(limits: SandboxLimits) -> tuple[int, int]:
    """(memory bytes, tasks) of a run's cgroup: the init is one task beside the program's ``max_processes``."""
    return limits.total_memory_bytes, limits.max_processes + 1


def _make_run_cgroup(cgroups: CgroupTree | None, limits: SandboxLimits) -> RunCgroup | None:
    if cgroups is None:
        return None
    try:
        return create_run_cgroup(cgroups, *_cgroup_bounds(limits))
    except CgroupSetupError as e:
        raise SandboxSetupError(f"{e}; the probe found this cgroup tree writable: check what changed on the "
                                f"host (permissions, cgroup.max.descendants), see docs/sandbox.md") from e


def _interpreter() -> tuple[str, list[str]]:
    """The project's interpreter (symlinks resolved: a venv under the hidden repo would not resolve) and the
    directories it needs beside the system ones: its prefix (stdlib, libpython) and its own directory."""
    python = os.path.realpath(sys.executable)
    covered = {os.path.realpath(d) for d in SYSTEM_DIRS if os.path.isdir(d)}
    binds = [d for d in SYSTEM_DIRS if os.path.lexists(d)]
    for extra in sorted({os.path.realpath(sys.base_prefix), os.path.dirname(python)}):
        if not any(extra == c or extra.startswith(c + "/") for c in covered):
            binds.append(extra)
            covered.add(extra)
    return python, binds


_mountpoint: str | None = None


def _root_mountpoint() -> str:
    """An empty host directory; each sandbox mounts its private root over it in its own mount namespace."""
    global _mountpoint
    if _mountpoint is None:
        _mountpoint = tempfile.mkdtemp(prefix="areal-sandbox-root-")
        atexit.register(shutil.rmtree, _mountpoint, ignore_errors=True)
    return _mountpoint


def _uid_lock_dir() -> str:
    path = "/run/areal-sandbox"
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != 0 or st.st_mode & 0o022:
        raise SandboxSetupError(f"{path}: expected a root-owned directory not writable by others")
    return path


@contextlib.contextmanager
def _lease_uid() -> Iterator[int]:
    """Hold one uid slot for a run; flock so other processes on the host never get the same uid."""
    lock_dir = _uid_lock_dir()
    for slot in range(UID_SLOTS):
        fd = os.open(f"{lock_dir}/{slot}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield UID_BASE + slot
        finally:
            os.close(fd)
        return
    raise SandboxSetupError(f"all {UID_SLOTS} sandbox uids ({UID_BASE}+) are in use")


def _find_unshare() -> str:
    unshare = shutil.which("unshare", path=HOST_ENV["PATH"])
    if unshare is None:
        raise SandboxSetupError(f"util-linux `unshare` not found on {HOST_ENV['PATH']}; install util-linux")
    return unshare


def _unshare_command(unshare: str, python: str, status_fd: int, as_root: bool) -> list[str]:
    userns = [] if as_root else ["--user", "--map-root-user"]
    namespaces = ["--mount", "--pid", "--net", "--ipc", "--uts", "--cgroup", *userns]
    # --kill-child: the init dies with unshare, so a killed unshare never leaves a namespace running
    return [unshare, *namespaces, "--fork", "--kill-child=SIGKILL", "--propagation", "private", "--",
            python, "-I", "-S", "-B", BOOT, str(status_fd)]


async def _run_isolated(source: str, stdin: bytes, limits: SandboxLimits, cgroups: CgroupTree | None) -> SandboxResult:
    """One run inside fresh namespaces and its own cgroup: spawn unshare + init, feed the spec, capture, classify."""
    python, binds = _interpreter()
    as_root = os.geteuid() == 0
    with _lease_uid() if as_root else contextlib.nullcontext(NESTED_UID) as uid:
        cgroup = _make_run_cgroup(cgroups, limits)
        try:
            spec = {
                "root": _root_mountpoint(), "binds": binds, "workdir": WORKDIR, "source": source,
                "tmpfs_bytes": limits.tmpfs_mb << 20, "tmpfs_owner": uid if as_root else 0,
                "uid": uid, "nested_userns": not as_root, "python": python, "env": PROGRAM_ENV,
                "rlimits": _rlimits(limits), "backstop_seconds": limits.wall_seconds + 1.0,
                "cgroup": cgroup.boot_spec() if cgroup else None,
            }
            proc, reason, out, err, wall, end = await _spawn_boot(spec, stdin, limits, python, as_root, cgroup)
            oom_killed = cgroup is not None and cgroup.oom_kills() > 0
        finally:
            if cgroup:
                await cgroup.remove()
    if reason or (end is None and oom_killed):
        end = end or {}  # the host (or the out-of-memory killer) killed the init before it could report
        # unshare reports on the shared stderr that its child died of a SIGKILL: not the program's output
        err = UNSHARE_KILL_NOTE.sub(b"", err)
    if end is None or "setup_error" in end:
        detail = end["setup_error"] if end else f"unshare exited {proc.returncode}"
        raise SandboxSetupError(f"sandbox setup failed: {detail}; stderr: {err[-2000:].decode(errors='replace')}")
    return _result(reason, end, out, err, wall, limits, oom_killed)


async def _spawn_boot(spec: dict, stdin: bytes, limits: SandboxLimits, python: str, as_root: bool,
                      cgroup: RunCgroup | None):
    """Start unshare + the init with ``spec``, capture the run; (process, kill reason, stdout, stderr, wall, the
    init's report or None)."""
    payload = len(header := json.dumps(spec).encode()).to_bytes(8, "big") + header + stdin
    unshare = _find_unshare()
    status_r, status_w = os.pipe()
    prepare = None if cgroup is None else (lambda proc: _move_init(proc.pid, cgroup))
    try:
        argv = _unshare_command(unshare, python, status_w, as_root)
        spawn = dict(env=HOST_ENV, pass_fds=(status_w,))
        proc, reason, out, err, wall = await capture(argv, spawn, payload, limits, kill_namespace, status_w,
                                                      prepare)
        return proc, reason, out, err, wall, _read_status(status_r)
    finally:
        os.close(status_r)


async def _move_init(unshare_pid: int, cgroup: RunCgroup) -> None:
    """Move the namespace's init into the run's cgroup while its interpreter starts. It waits for its spec,
    sent only after this, so the program starts inside; and a move, which on cgroup v1 waits for an RCU grace
    period (~10 ms here), costs the run no time. The init cannot exit before it has its spec (short of its
    interpreter failing to start), so the pid found is still its own."""
    deadline = time.monotonic() + INIT_START_S
    while not (children := children_of(unshare_pid)):
        if time.monotonic() > deadline:
            raise SandboxSetupError(f"unshare (pid {unshare_pid}) started no init within {INIT_START_S} s")
        await asyncio.sleep(0.001)
    try:
        await asyncio.get_running_loop().run_in_executor(None, cgroup.join, children[0])
    except OSError as e:
        raise SandboxSetupError(f"moving the sandbox's init into its cgroup {cgroup.leaves}: {e}") from e


async def _run_insecure(source: str, stdin: bytes, limits: SandboxLimits) -> SandboxResult:
    """Development only: a temporary directory and rlimits (no RLIMIT_NPROC: it would count all your
    processes), killed as a process group at the deadline."""
    rlimits = {k: v for k, v in _rlimits(limits).items() if k != "RLIMIT_NPROC"}
    wrapper = ("import json, os, resource, sys\n"
               "for k, v in json.loads(sys.argv[1]).items(): resource.setrlimit(getattr(resource, k), tuple(v))\n"
               "os.execv(sys.executable, [sys.executable, '-I', '-S', '-B', '-u', 'main.py'])")
    with tempfile.TemporaryDirectory(prefix="areal-sandbox-insecure-") as work:
        Path(work, "main.py").write_text(source, encoding="utf-8")
        env = {**PROGRAM_ENV, "HOME": work, "TMPDIR": work}
        argv = [os.path.realpath(sys.executable), "-I", "-S", "-c", wrapper, json.dumps(rlimits)]
        proc, reason, out, err, wall = await capture(argv, dict(cwd=work, env=env), stdin, limits, kill_group)
    code = proc.returncode
    end = {"signal": -code} if code < 0 else {"exit": code}
    return _result(reason, end, out, err, wall, limits, oom_killed=False)


def _read_status(fd: int) -> dict | None:
    """The init's report, written before it exited (every writer is closed by now); the first line counts."""
    data = b""
    while chunk := os.read(fd, READ_CHUNK):
        data += chunk
    lines = data.splitlines()
    return json.loads(lines[0]) if lines else None


def _result(reason: str | None, end: dict, out: bytes, err: bytes, wall: float, limits: SandboxLimits,
            oom_killed: bool) -> SandboxResult:
    """Classify how the run ended; the host's own kill (timeout, output_limit) takes precedence."""
    sig, code = end.get("signal"), end.get("exit")
    exit_code = None if reason or "wall" in end else (-sig if sig else code)
    cpu = end.get("cpu", 0.0)
    if reason:
        status = reason
    elif "wall" in end or sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits.cpu_seconds):
        status = "timeout"
    elif exit_code != 0 and (oom_killed or MEMORY_ERROR.search(err[-4096:])):
        status = "memory"
    else:
        status = "ok" if exit_code == 0 else "error"
    decode = lambda b: b.decode("utf-8", errors="replace")  # noqa: E731
    return SandboxResult(status, exit_code, decode(out), decode(err), wall)
