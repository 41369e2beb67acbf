"""Run untrusted, model-written Python programs in Linux namespaces under hard limits (docs/sandbox.md).

Each run gets fresh mount, PID, network, IPC, UTS and cgroup namespaces (util-linux ``unshare``); inside,
``sandbox_boot.py`` builds a read-only root of the system directories and the interpreter only, with a
size-limited tmpfs as the working directory, and runs the program as an unprivileged uid with no
capabilities, no_new_privs and rlimits. The host enforces the wall clock by killing the namespace's init,
which takes every process in the namespace with it. Nothing runs until ``probe_isolation()`` has proved,
with programs run inside, that the isolation holds; ``Sandbox(insecure=True)`` skips the namespaces and the
probe (development only: rlimits and timeouts still apply).
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
from typing import Callable, Iterator, Literal

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
READ_CHUNK = 1 << 16


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits; every process of the program gets the per-process ones."""

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

    def __post_init__(self):
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"SandboxLimits.{name}: got {value!r}, expected a positive number")


@dataclass(frozen=True)
class SandboxResult:
    """How one run ended, with its captured (possibly truncated) output."""

    status: SandboxStatus
    """ok: exit 0; error: other exit or a signal; timeout: wall clock or CPU limit; memory: out of address
    space; output_limit: stdout or stderr passed ``max_output_bytes`` and the run was killed."""
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
        return await _run_isolated(source, data, self.limits)

    def run(self, source: str, stdin: str | bytes = b"") -> SandboxResult:
        """Blocking ``run_async``, for code without an event loop."""
        return asyncio.run(self.run_async(source, stdin))


_probe_report: ProbeReport | None = None
PROBE_LIMITS = SandboxLimits(cpu_seconds=5, wall_seconds=20.0, memory_mb=256, max_processes=8)


async def probe_isolation_async() -> ProbeReport:
    """Prove the isolation by running probe programs inside the sandbox; cached for the process."""
    global _probe_report
    if _probe_report is None:

        async def run(source: str, stdin: bytes) -> SandboxResult:
            return await _run_isolated(source, stdin, PROBE_LIMITS)

        try:
            _probe_report = await check_isolation(run, _rlimits(PROBE_LIMITS))
        except (SandboxSetupError, OSError) as e:
            _probe_report = ProbeReport.setup_failed(f"{type(e).__name__}: {e}")
    return _probe_report


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
    }


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


async def _run_isolated(source: str, stdin: bytes, limits: SandboxLimits) -> SandboxResult:
    """One run inside fresh namespaces: spawn unshare + init, feed the spec, capture, classify."""
    python, binds = _interpreter()
    as_root = os.geteuid() == 0
    with _lease_uid() if as_root else contextlib.nullcontext(NESTED_UID) as uid:
        spec = {
            "root": _root_mountpoint(), "binds": binds, "workdir": WORKDIR, "source": source,
            "tmpfs_bytes": limits.tmpfs_mb << 20, "tmpfs_owner": uid if as_root else 0,
            "uid": uid, "nested_userns": not as_root, "python": python, "env": PROGRAM_ENV,
            "rlimits": _rlimits(limits), "backstop_seconds": limits.wall_seconds + 1.0,
        }
        payload = len(header := json.dumps(spec).encode()).to_bytes(8, "big") + header + stdin
        unshare = _find_unshare()
        status_r, status_w = os.pipe()
        try:
            argv = _unshare_command(unshare, python, status_w, as_root)
            spawn = dict(env=HOST_ENV, pass_fds=(status_w,))
            proc, reason, out, err, wall = await _capture(argv, spawn, payload, limits, _kill_namespace, status_w)
            end = _read_status(status_r)
        finally:
            os.close(status_r)
    if reason:
        end = end or {}  # the host killed the init before it could report
        # unshare reports on the shared stderr that its child died of the SIGKILL we sent: not the program's
        err = UNSHARE_KILL_NOTE.sub(b"", err)
    if end is None or "setup_error" in end:
        detail = end["setup_error"] if end else f"unshare exited {proc.returncode}"
        raise SandboxSetupError(f"sandbox setup failed: {detail}; stderr: {err[-2000:].decode(errors='replace')}")
    return _result(reason, end, out, err, wall, limits)


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
        proc, reason, out, err, wall = await _capture(argv, dict(cwd=work, env=env), stdin, limits, _kill_group)
    code = proc.returncode
    end = {"signal": -code} if code < 0 else {"exit": code}
    return _result(reason, end, out, err, wall, limits)


async def _capture(argv: list[str], spawn: dict, stdin: bytes, limits: SandboxLimits, kill: Callable[[int], None],
                   child_only_fd: int | None = None):
    """Spawn ``argv``, feed stdin, read stdout and stderr incrementally up to the cap, and kill at the deadline
    or on overflow. Returns (process, why the host killed it or None, stdout, stderr, wall seconds).

    The output pipes are ours, not asyncio's: asyncio's ``Process.wait()`` also waits for its pipes to reach
    EOF, which never comes for a stream we stopped reading at the cap. ``child_only_fd`` is closed here once
    the child holds it."""
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    try:
        (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE, stdout=out_w,
                                                        stderr=err_w, start_new_session=True, **spawn)
        except BaseException:
            os.close(out_r), os.close(err_r)
            raise
        finally:
            os.close(out_w), os.close(err_w)
    finally:
        if child_only_fd is not None:
            os.close(child_only_fd)
    streams = []
    for fd in (out_r, err_r):
        reader = asyncio.StreamReader(limit=READ_CHUNK)
        pipe = open(fd, "rb", buffering=0)  # noqa: SIM115 -- the transport owns and closes it
        transport, _ = await loop.connect_read_pipe(lambda r=reader: asyncio.StreamReaderProtocol(r), pipe)
        streams.append((reader, transport))
    feeder = asyncio.create_task(_feed(proc.stdin, stdin))
    out, err = bytearray(), bytearray()
    pumps = {asyncio.create_task(_pump(reader, buf, limits.max_output_bytes))
             for (reader, _), buf in zip(streams, (out, err))}
    reason, pending = None, pumps
    while pending:
        remaining = start + limits.wall_seconds - time.monotonic()
        done, pending = await asyncio.wait(pending, timeout=max(remaining, 0), return_when=asyncio.FIRST_COMPLETED)
        if not done:
            reason = "timeout"
        elif any(task.result() for task in done):
            reason = "output_limit"
        if reason:
            kill(proc.pid)
            break
    if pending:  # what was written before the kill; an escaped writer (insecure mode only) gets a second
        await asyncio.wait(pending, timeout=1.0)
    for task in (*pending, feeder):
        task.cancel()
    await asyncio.gather(*pending, feeder, return_exceptions=True)
    for _, transport in streams:
        transport.close()
    proc.stdin.close()
    await proc.wait()
    return proc, reason, bytes(out), bytes(err), time.monotonic() - start


async def _feed(writer: asyncio.StreamWriter, data: bytes) -> None:
    # a program that exits without reading its stdin closes the pipe under us: that is not an error
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        writer.write(data)
        await writer.drain()
        writer.close()


async def _pump(reader: asyncio.StreamReader, buf: bytearray, cap: int) -> bool:
    """Append what ``reader`` yields to ``buf`` up to ``cap`` bytes; True as soon as there was more."""
    while chunk := await reader.read(READ_CHUNK):
        room = cap - len(buf)
        buf += chunk[:room]
        if len(chunk) > room:
            return True
    return False


def _kill_namespace(unshare_pid: int) -> None:
    """SIGKILL the namespace's init (a child of unshare): the kernel then kills all its processes, and unshare
    exits only after reaping it, so the host sees no survivor once ``proc.wait()`` returns."""
    try:
        children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    except OSError:
        children = []
    for child in map(int, children):
        try:
            pidfd = os.pidfd_open(child)
        except ProcessLookupError:
            continue
        try:
            # checked after opening the pidfd: a recycled pid can no longer be mistaken for the init
            if _parent_pid(child) == unshare_pid:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                return
        except OSError:
            pass
        finally:
            os.close(pidfd)
    # no init yet (or gone already): killing unshare takes the init down through --kill-child
    with contextlib.suppress(ProcessLookupError):
        os.kill(unshare_pid, signal.SIGKILL)


def _parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _read_status(fd: int) -> dict | None:
    """The init's report, written before it exited (every writer is closed by now); the first line counts."""
    data = b""
    while chunk := os.read(fd, READ_CHUNK):
        data += chunk
    lines = data.splitlines()
    return json.loads(lines[0]) if lines else None


def _result(reason: str | None, end: dict, out: bytes, err: bytes, wall: float, limits: SandboxLimits) -> SandboxResult:
    """Classify how the run ended; the host's own kill (timeout, output_limit) takes precedence."""
    sig, code = end.get("signal"), end.get("exit")
    exit_code = None if reason or "wall" in end else (-sig if sig else code)
    cpu = end.get("cpu", 0.0)
    if reason:
        status = reason
    elif "wall" in end or sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits.cpu_seconds):
        status = "timeout"
    elif exit_code != 0 and MEMORY_ERROR.search(err[-4096:]):
        status = "memory"
    else:
        status = "ok" if exit_code == 0 else "error"
    decode = lambda b: b.decode("utf-8", errors="replace")  # noqa: E731
    return SandboxResult(status, exit_code, decode(out), decode(err), wall)
