"""The sandbox for model-written code: each hostile program is contained, classified, and leaves the host as it was.

These run real namespaces (no fakes): on a host where the isolation probe fails, every test here fails
with the probe's explanation rather than passing vacuously.
"""

import asyncio
import contextlib
import errno
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from rollouts.envs import sandbox, sandbox_cgroup
from rollouts.envs.sandbox import Sandbox, SandboxLimits, SandboxSetupError, SandboxUnavailableError, probe_isolation
from rollouts.envs.sandbox_boot import SYSCALL_NUMBERS
from rollouts.envs.sandbox_probe import ProbeReport

REPO = Path(__file__).resolve().parents[2]
LIMITS = SandboxLimits(cpu_seconds=1, wall_seconds=2.0, memory_mb=128, max_processes=16, max_file_mb=4,
                       max_output_bytes=10_000, tmpfs_mb=16)
FORK_BOMB = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
MEMORY_BOMB = "hoard = []\nwhile True:\n    hoard.append(bytearray(10**6))\n"


def leftover_children() -> list[str]:
    """Live processes descended from this test process (the sandboxes' namespaces are), with their uid.

    Other programs on the host may run sandboxes too, under the same uid range: only our own descendants
    say something about our runs."""
    parent, uid = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields["State"].split()[0] != "Z":
            parent[int(entry.name)] = int(fields["PPid"])
            uid[int(entry.name)] = int(fields["Uid"].split()[0])
    ours, frontier = [], [os.getpid()]
    while frontier:
        children = [pid for pid, ppid in parent.items() if ppid in frontier]
        ours += children
        frontier = children
    return [f"pid {pid} uid {uid[pid]}" for pid in ours]


@pytest.fixture(autouse=True)
def no_survivors():
    """Every test ends with no process of its sandboxes left (whatever uid): the namespace died with its init.
    Children that were there before (other tests' worker pools in the same session) are not the test's."""
    before = set(leftover_children())
    yield
    assert sorted(set(leftover_children()) - before) == []


def run(source: str, stdin: str = "", limits: SandboxLimits = LIMITS):
    return Sandbox(limits).run(source, stdin)


def test_probe_proves_the_isolation_on_this_host():
    report = probe_isolation()
    assert report.ok, report.explain()


def test_a_normal_program_reads_stdin_and_returns_stdout_and_its_exit_code():
    result = run("import sys\ndata = sys.stdin.read()\nprint(data.upper())\nsys.exit(3)", stdin="hello")
    assert (result.status, result.exit_code, result.stdout, result.stderr) == ("error", 3, "HELLO\n", "")
    ok = run("print(sum(range(10)))")
    assert (ok.status, ok.exit_code, ok.stdout, ok.ok) == ("ok", 0, "45\n", True)


def test_a_crash_is_an_error_with_its_traceback():
    result = run("raise ValueError('bad answer')")
    assert result.status == "error" and result.exit_code == 1
    assert "ValueError: bad answer" in result.stderr


def test_a_megabyte_of_stdin_arrives_whole_and_unread_stdin_does_not_hang():
    blob = "x" * (1 << 20)
    assert run("import sys; print(len(sys.stdin.read()))", stdin=blob).stdout == f"{1 << 20}\n"
    assert run("print('ignored stdin')", stdin=blob).status == "ok"


def test_fork_bomb_is_killed_at_the_wall_clock_without_starving_a_concurrent_sandbox():
    async def bomb_and_bystander():
        box = Sandbox(LIMITS)
        bomb = asyncio.ensure_future(box.run_async(FORK_BOMB))
        await asyncio.sleep(0.5)  # the bomb is at its process limit by now
        bystander = await box.run_async("import os\nif os.fork() == 0:\n    os._exit(0)\nos.wait()\nprint('ok')")
        bomb_still_running = not bomb.done()
        return await bomb, bystander, bomb_still_running

    bomb, bystander, overlapped = asyncio.run(bomb_and_bystander())
    assert bomb.status == "timeout" and bomb.exit_code is None
    assert bomb.wall_seconds < LIMITS.wall_seconds + 1.0
    assert (bystander.status, bystander.stdout) == ("ok", "ok\n")
    assert overlapped  # the bystander forked while the bomb held every process it may have
    assert subprocess.run([sys.executable, "-c", "print('host alive')"], capture_output=True).stdout == b"host alive\n"


def test_memory_bomb_is_classified_memory():
    result = run(MEMORY_BOMB)
    assert result.status == "memory"
    assert "MemoryError" in result.stderr


def test_busy_loop_is_stopped_by_the_cpu_limit():
    result = run("while True:\n    pass\n", limits=SandboxLimits(cpu_seconds=1, wall_seconds=20.0, memory_mb=128))
    assert result.status == "timeout"
    assert result.exit_code == -signal.SIGXCPU  # the CPU rlimit ended it, not the wall clock


def test_sleeping_loop_is_killed_at_the_wall_clock():
    result = run("import time\nprint('started', flush=True)\nwhile True:\n    time.sleep(0.05)\n")
    assert (result.status, result.exit_code, result.stdout) == ("timeout", None, "started\n")
    assert LIMITS.wall_seconds <= result.wall_seconds < LIMITS.wall_seconds + 1.0


def test_socket_to_a_port_the_host_listens_on_fails():
    program = """
import socket, sys
port = int(sys.stdin.read())
print([name for _, name in socket.if_nameindex()])
for host in ("127.0.0.1", "192.0.2.1"):
    try:
        socket.create_connection((host, port), timeout=1)
        print("connected")
    except OSError as e:
        print(type(e).__name__, e.errno)
"""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        result = run(program, stdin=str(listener.getsockname()[1]))
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    lines = result.stdout.splitlines()
    assert lines[:1] == ["['lo']"], result
    assert "connected" not in result.stdout and len(lines) == 3, result


def test_writes_outside_the_work_dir_fail_and_leave_the_host_untouched(tmp_path):
    name = f"areal-sandbox-test-{uuid.uuid4().hex}"
    outside = [f"/tmp/{name}", f"/{name}", f"/usr/{name}", f"/etc/{name}", str(REPO / name), str(tmp_path / name)]
    program = """
import json, os, sys
written = []
for path in json.load(sys.stdin):
    try:
        with open(path, "w") as f:
            f.write("escaped")
        written.append(path)
    except OSError:
        pass
with open("inside.txt", "w") as f:
    f.write("fine")
print(json.dumps({"written": written, "inside": open("inside.txt").read(), "cwd": os.getcwd()}))
"""
    result = run(program, stdin=json.dumps(outside))
    assert json.loads(result.stdout) == {"written": [], "inside": "fine", "cwd": sandbox.WORKDIR}, result
    assert not any(os.path.exists(path) for path in outside)


def test_project_and_home_files_are_unreadable(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    paths = [str(REPO / "pyproject.toml"), __file__, sandbox.__file__, str(secret), "/root/.bashrc", "/etc/shadow"]
    assert (REPO / "pyproject.toml").is_file()
    program = """
import json, os, sys
paths, dirs = json.load(sys.stdin)
readable = []
for path in paths:
    try:
        open(path, "rb").read(1)
        readable.append(path)
    except OSError:
        pass
print(json.dumps({"readable": readable, "visible_dirs": [d for d in dirs if os.path.exists(d)]}))
"""
    result = run(program, stdin=json.dumps([paths, [str(REPO), "/home", str(tmp_path)]]))
    assert json.loads(result.stdout) == {"readable": [], "visible_dirs": []}, result


def test_signalling_the_parent_or_the_test_runner_fails_and_both_survive():
    program = """
import os, signal, sys
runner = int(sys.stdin.read())
for target in (os.getppid(), runner, -1):
    try:
        os.kill(target, signal.SIGKILL)
        print(target, "killed")
    except OSError as e:
        print(target, type(e).__name__)
"""
    result = run(program, stdin=str(os.getpid()))
    assert result.status == "ok", result  # the namespace's init (its parent) survived, or the run would be cut
    assert result.stdout.splitlines()[:2] == ["1 PermissionError", f"{os.getpid()} ProcessLookupError"]
    os.kill(os.getpid(), 0)


def test_kernel_keyrings_cannot_carry_state_to_the_next_run():
    numbers = SYSCALL_NUMBERS[os.uname().machine]
    program = f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
added = libc.syscall({numbers["add_key"]}, b"user", b"stash", b"for the next run", 16, -4)  # -4: user keyring
print(added, ctypes.get_errno())
"""
    assert run(program).stdout == f"-1 {errno.EPERM}\n"


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_huge_output_is_truncated_at_the_cap_and_classified(stream):
    result = run(f"import sys\nwhile True:\n    sys.{stream}.write('spam' * 1000)\n")
    assert (result.status, result.exit_code) == ("output_limit", None)
    assert len(getattr(result, stream)) == LIMITS.max_output_bytes
    assert result.wall_seconds < LIMITS.wall_seconds


def test_two_sandboxes_run_concurrently():
    async def both():
        box = Sandbox(LIMITS)
        start = time.monotonic()
        results = await asyncio.gather(*(box.run_async(f"import time; time.sleep(1); print({i})") for i in range(2)))
        return results, time.monotonic() - start

    results, elapsed = asyncio.run(both())
    assert [(r.status, r.stdout) for r in results] == [("ok", "0\n"), ("ok", "1\n")]
    assert elapsed < 1.9  # overlapped, not one after the other


def test_mounts_stay_inside_the_sandbox():
    run("print('x')")
    assert os.listdir(sandbox._root_mountpoint()) == []
    assert "sandbox-root" not in Path("/proc/self/mountinfo").read_text()


def test_a_host_that_fails_the_probe_refuses_to_run_code_unless_insecure(monkeypatch):
    monkeypatch.setattr(sandbox, "_probe_report", ProbeReport(("network_interfaces",)))
    refusal = r"network_interfaces: .*no new network namespace(.|\n)*insecure=True"
    with pytest.raises(SandboxUnavailableError, match=refusal):
        Sandbox(LIMITS).run("print('should not run')")
    insecure = Sandbox(SandboxLimits(wall_seconds=1.0, memory_mb=128), insecure=True)
    assert insecure.run("print(2 + 2)").stdout == "4\n"
    assert insecure.run("import time; time.sleep(30)").status == "timeout"
    assert insecure.run(MEMORY_BOMB).status == "memory"


def test_limits_must_be_positive_and_name_the_field():
    with pytest.raises(ValueError, match="SandboxLimits.memory_mb"):
        SandboxLimits(memory_mb=0)


# --- the start-up probe: what is cached ---


def forget_probe(monkeypatch):
    """Forget this process's cached probe for the test (the original comes back after it)."""
    monkeypatch.setattr(sandbox, "_probe_report", None)
    monkeypatch.setattr(sandbox, "_cgroups", None)


@pytest.fixture
def fresh_probe(monkeypatch):
    forget_probe(monkeypatch)


def test_a_probe_that_could_not_run_is_tried_again_on_the_next_call(fresh_probe, monkeypatch):
    spawns, real_capture = [], sandbox.capture

    async def fork_fails_once(*args, **kwargs):
        spawns.append(args[0])
        if len(spawns) == 1:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return await real_capture(*args, **kwargs)

    monkeypatch.setattr(sandbox, "capture", fork_fails_once)
    box = Sandbox(LIMITS)
    with pytest.raises(SandboxUnavailableError, match="BlockingIOError"):
        box.run("print('refused while the probe could not run')")
    assert box.run("print('probed again')").stdout == "probed again\n"
    assert len(spawns) == 3  # failed probe, probe, run


def test_a_completed_probe_is_reused_whether_it_passed_or_failed(fresh_probe, monkeypatch):
    probes, real_check = [], sandbox.check_isolation

    async def counted(*args):
        probes.append(1)
        return await real_check(*args)

    monkeypatch.setattr(sandbox, "check_isolation", counted)
    box = Sandbox(LIMITS)
    assert [box.run(f"print({i})").stdout for i in range(3)] == ["0\n", "1\n", "2\n"]
    assert probe_isolation().ok and len(probes) == 1

    async def finds_host_interfaces(*args):
        probes.append(1)
        return ProbeReport(("network_interfaces",))

    monkeypatch.setattr(sandbox, "_probe_report", None)
    monkeypatch.setattr(sandbox, "check_isolation", finds_host_interfaces)
    for _ in range(2):
        with pytest.raises(SandboxUnavailableError, match="network_interfaces"):
            box.run("print('never')")
    assert len(probes) == 2


def test_the_probe_fails_naming_the_fix_when_the_run_cgroup_limits_do_not_take(monkeypatch):
    require_cgroups()
    forget_probe(monkeypatch)
    real_write = sandbox_cgroup._write
    # the pids limit silently not written: the leaf keeps its default, unlimited
    monkeypatch.setattr(sandbox_cgroup, "_write",
                        lambda path, value: path.endswith("pids.max") or real_write(path, value))
    with pytest.raises(SandboxUnavailableError, match=r"cgroup: the program is not in its per-run cgroup"):
        Sandbox(LIMITS).run("print('never')")


def test_no_program_starts_outside_its_run_cgroup(monkeypatch):
    require_cgroups()
    monkeypatch.setattr(sandbox_cgroup.RunCgroup, "join", lambda self, pid: None)  # the host forgets the move
    with pytest.raises(SandboxSetupError, match=r"the init is not in the run's cgroup"):
        Sandbox(LIMITS).run("print('never')")


# --- bounds of the run as a whole, each observed from the host while the program runs ---

SAMPLING_SLACK = 32 << 20  # a sample reads the processes one after another, not at one instant
# these programs end on their own within a second; the wall clock only has to outlast a loaded host's start-up
WATCHED = replace(LIMITS, wall_seconds=10.0)


def require_cgroups() -> sandbox_cgroup.CgroupTree:
    """The cgroup tree the sandbox runs with; on a host without a writable one, skip and say what is missing."""
    report = probe_isolation()
    assert report.ok, report.explain()
    if sandbox._cgroups is None:
        pytest.skip("no writable cgroup tree on this host: runs are bounded per process only (docs/sandbox.md)")
    return sandbox._cgroups


def sandboxed_pids() -> list[int]:
    """Live processes of this test's sandboxed programs: its descendants that run as a sandbox uid."""
    found, frontier = [], [os.getpid()]
    while frontier:
        children = []
        for pid in frontier:
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                with contextlib.suppress(OSError):
                    children += map(int, task.read_text().split())
        frontier = children
        for pid in children:
            with contextlib.suppress(OSError):
                status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
                if int(status["Uid"].split()[0]) >= sandbox.UID_BASE:
                    found.append(pid)
    return found


@contextlib.contextmanager
def watch_programs(sample, every: float = 0.01):
    """While the block runs, call ``sample(pids)`` from the host every ``every`` seconds on the sandboxed
    programs alive then; yields the list of its results (a sample a process's exit interrupted is dropped)."""
    results, stop = [], threading.Event()

    def loop():
        while not stop.is_set():
            pids = sandboxed_pids()
            if pids:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    results.append(sample(pids))
            stop.wait(every)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield results
    finally:
        stop.set()
        thread.join()


def anonymous_memory(pids: list[int]) -> int:
    """Anonymous memory of the processes together, in bytes: shared (copy-on-write) pages split between them."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss_Anon:"):
                total += int(line.split()[1]) << 10
    return total


def memfds(pids: list[int]) -> list[str]:
    """The memfds the processes hold open."""
    links = [os.readlink(f"/proc/{pid}/fd/{fd}") for pid in pids for fd in os.listdir(f"/proc/{pid}/fd")]
    return [link for link in links if link.startswith("/memfd:")]


def in_namespace_of(pid: int, kind: str, *command: str) -> str:
    """Output of ``command`` run by the host in the ``kind`` namespace ("ipc", "net") of ``pid``."""
    argv = ["nsenter", f"--{kind}=/proc/{pid}/ns/{kind}", *command]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=5).stdout


def sysv_objects(pids: list[int]) -> int:
    """SysV shared memory segments, message queues and semaphore sets alive in the program's IPC namespace."""
    tables = in_namespace_of(pids[0], "ipc", "cat", "/proc/sysvipc/shm", "/proc/sysvipc/msg", "/proc/sysvipc/sem")
    return sum(1 for line in tables.splitlines() if line.split() and line.split()[0] != "key")


def unix_queued_bytes(pids: list[int]) -> int:
    """Bytes waiting unread in the receive queues of the Unix sockets of the program's network namespace."""
    table = in_namespace_of(pids[0], "net", "ss", "--unix", "--all", "--no-header")
    return sum(int(line.split()[2]) for line in table.splitlines())


def test_processes_together_hold_no_more_than_the_total_memory():
    require_cgroups()
    # five processes of 80 MiB each: every one within memory_mb (128 MiB), together 400 MiB against
    # total_memory_mb, here its default memory_mb + tmpfs_mb = 144 MiB
    program = """
import os, sys, time
children = []
for _ in range(5):
    pid = os.fork()
    if pid == 0:
        hoard = bytearray(80 << 20)
        time.sleep(0.5)
        os._exit(0)
    children.append(pid)
sys.exit(0 if all(os.waitpid(pid, 0)[1] == 0 for pid in children) else 3)
"""
    with watch_programs(anonymous_memory) as held:
        result = run(program, limits=WATCHED)
    assert held and max(held) <= WATCHED.total_memory_bytes + SAMPLING_SLACK, [h >> 20 for h in held]
    assert result.status == "memory", result  # the cgroup's out-of-memory kill, as the host counted it


def test_unix_socket_queues_count_against_the_total_memory():
    require_cgroups()
    # 50 socket pairs of 8 MiB of unread data each (SO_SNDBUF at the kernel's cap): 400 MiB the kernel
    # holds for a process of a few MiB, against a total of 144 MiB
    program = """
import socket, sys, time
time.sleep(0.2)  # the host's first look, before the kernel starts holding anything
pairs = []
for _ in range(50):
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    a.setblocking(False)
    pairs.append((a, b))
    try:
        while True:
            a.send(bytes(1 << 16))
    except BlockingIOError:
        pass
time.sleep(0.5)
"""
    with watch_programs(unix_queued_bytes, every=0.02) as queued:
        result = run(program, limits=WATCHED)
    assert queued and max(queued) <= WATCHED.total_memory_bytes, [q >> 20 for q in queued]
    assert result.status == "memory", result


def test_memfd_is_refused_so_no_memory_hides_outside_the_process_limits():
    # memfd pages count against no rlimit once unmapped: one per descriptor, each at the file size limit
    program = """
import errno, os, sys, time
held = []
try:
    for _ in range(64):
        fd = os.memfd_create("hoard")
        for _ in range(4):
            os.write(fd, bytes(1 << 20))
        held.append(fd)
    code = 3
except OSError as e:
    code = 0 if not held and e.errno == errno.EPERM else 4
time.sleep(0.3)
sys.exit(code)
"""
    with watch_programs(memfds) as seen:
        result = run(program, limits=WATCHED)
    assert seen and not any(seen), seen[-1:]  # the host saw the program run, never holding a memfd
    assert result.exit_code == 0, result  # this test's convention: memfd_create failed with EPERM


def test_sysv_shared_memory_message_queues_and_semaphores_are_refused():
    # a detached segment or a queue stays in the IPC namespace after its creator is gone, counted by no rlimit
    program = """
import ctypes, errno, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
refused = []
def attempt(result):
    refused.append(result == -1 and ctypes.get_errno() == errno.EPERM)
    return result
segment = attempt(libc.shmget(0, 64 << 20, 0o1600))  # IPC_PRIVATE, IPC_CREAT | 0600
if segment != -1:
    address = libc.shmat(segment, None, 0)
    ctypes.memset(address, 1, 64 << 20)
    libc.shmdt(ctypes.c_void_p(address))
queue = attempt(libc.msgget(0, 0o1600))
if queue != -1:
    message = ctypes.create_string_buffer(b"\\x01" + bytes(7) + bytes(8192))
    libc.msgsnd(queue, message, 8192, 0o4000)
attempt(libc.semget(0, 8, 0o1600))
time.sleep(0.3)
sys.exit(0 if all(refused) else 3)
"""
    with watch_programs(sysv_objects, every=0.02) as seen:
        result = run(program, limits=WATCHED)
    assert seen and max(seen) == 0, seen  # the host found nothing in the program's IPC namespace
    assert result.exit_code == 0, result  # this test's convention: every call failed with EPERM


def host_can_bind_vsock(port: int) -> bool:
    with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as s:
        try:
            s.bind((socket.VMADDR_CID_ANY, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def test_vsock_is_refused_and_the_host_keeps_its_vsock_ports():
    # vsock ports are the hypervisor's and no namespace separates them: a program that binds one takes it
    # from the host (this VM's own agent listens on vsock)
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
        host_has_vsock = True
    except OSError:
        host_has_vsock = False  # then only the refusal inside is shown
    port = next(p for p in iter(lambda: random.randrange(20_000, 60_000), None)
                if not host_has_vsock or host_can_bind_vsock(p))
    program = """
import errno, socket, sys, time
try:
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.bind((socket.VMADDR_CID_ANY, int(sys.stdin.read())))
    s.listen()
    code = 3
except OSError as e:
    code = 0 if e.errno == errno.EAFNOSUPPORT else 4
time.sleep(0.3)
sys.exit(code)
"""
    sample = (lambda pids: host_can_bind_vsock(port)) if host_has_vsock else (lambda pids: True)
    with watch_programs(sample, every=0.02) as host_bound:
        result = run(program, stdin=str(port), limits=WATCHED)
    assert host_bound and all(host_bound), host_bound  # the port stayed the host's all along
    assert result.exit_code == 0, result  # this test's convention: socket(AF_VSOCK) failed, EAFNOSUPPORT


def test_only_unix_inet_inet6_and_netlink_sockets_can_be_opened():
    program = """
import json, socket
def opens(family, kind=socket.SOCK_STREAM):
    try:
        socket.socket(family, kind).close()
        return "ok"
    except OSError as e:
        return e.errno
families = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17, "AF_ALG": 38,
            "AF_VSOCK": 40, "AF_XDP": 44}
kinds = {"AF_NETLINK": socket.SOCK_RAW, "AF_ALG": socket.SOCK_SEQPACKET, "AF_XDP": socket.SOCK_RAW}
opened = {name: opens(family, kinds.get(name, socket.SOCK_STREAM)) for name, family in families.items()}
opened["socketpair"] = "ok" if all(s.close() is None for s in socket.socketpair()) else "no"
print(json.dumps(opened))
"""
    denied = errno.EAFNOSUPPORT
    assert json.loads(run(program).stdout) == {
        "AF_UNIX": "ok", "AF_INET": "ok", "AF_INET6": "ok", "AF_NETLINK": "ok", "socketpair": "ok",
        "AF_PACKET": denied, "AF_ALG": denied, "AF_VSOCK": denied, "AF_XDP": denied}


def test_each_run_has_its_own_cgroup_and_small_rlimits_seen_from_the_host():
    tree = require_cgroups()
    expected = tree.limit_files(*sandbox._cgroup_bounds(WATCHED))
    own = {line.split(":")[1]: line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()}
    memory = "" if tree.version == 2 else "memory"

    def cgroup_and_rlimits(pids):
        path = {line.split(":")[1]: line.split(":", 2)[2]
                for line in Path(f"/proc/{pids[0]}/cgroup").read_text().splitlines()}[memory]
        leaf = os.path.basename(path)
        files = {rel: int(Path(tree.bases[os.path.dirname(rel)], leaf, os.path.basename(rel)).read_text())
                 for rel in expected}
        rlimits = {line[:26].strip(): line[26:].split()[0]
                   for line in Path(f"/proc/{pids[0]}/limits").read_text().splitlines()[1:]}
        return path, files, rlimits

    with watch_programs(cgroup_and_rlimits) as seen:
        assert run("import time; time.sleep(0.3)", limits=WATCHED).ok
    assert seen
    path, files, rlimits = seen[0]
    assert os.path.dirname(path) == own[memory] and os.path.basename(path).startswith(sandbox_cgroup.LEAF_PREFIX)
    memory_limit, pids_limit = ("memory.max", "pids.max") if tree.version == 2 else (
        "memory/memory.limit_in_bytes", "pids/pids.max")
    assert (files[memory_limit], files[pids_limit]) == (144 << 20, LIMITS.max_processes + 1)
    assert files == expected  # swap forbidden too, where the host accounts for it
    assert (rlimits["Max open files"], rlimits["Max locked memory"], rlimits["Max msgqueue size"]) == (
        str(LIMITS.max_open_files), str(sandbox.MEMLOCK_BYTES), "0")
    assert not any(Path(base, os.path.basename(path)).exists() for base in tree.bases.values())  # removed after


def test_the_cgroup_of_this_process_is_found_in_v1_and_v2_mount_tables():
    v1 = ("30 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
          "31 25 0:27 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
          "32 25 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
    assert sandbox_cgroup._own_cgroup_dirs(v1, "8:pids:/\n4:memory:/jobs/a\n0::/\n") == {
        "memory": "/sys/fs/cgroup/memory/jobs/a", "pids": "/sys/fs/cgroup/pids", "": "/sys/fs/cgroup/unified"}
    # a container's view: the mount shows a subtree, and only a cgroup inside it is reachable
    v2 = "40 30 0:30 /ctr /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"
    assert sandbox_cgroup._own_cgroup_dirs(v2, "0::/ctr/job\n") == {"": "/sys/fs/cgroup/job"}
    assert sandbox_cgroup._own_cgroup_dirs(v2, "0::/elsewhere\n") == {}
