"""The sandbox for model-written code: each hostile program is contained, classified, and leaves the host as it was.

These run real namespaces (no fakes): on a host where the isolation probe fails, every test here fails
with the probe's explanation rather than passing vacuously.
"""

import asyncio
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from rollouts.envs import sandbox
from rollouts.envs.sandbox import Sandbox, SandboxLimits, SandboxUnavailableError, probe_isolation
from rollouts.envs.sandbox_boot import DENIED_SYSCALLS, SECCOMP_TABLE
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
    assert lines[0] == "['lo']"
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
    numbers = dict(zip(DENIED_SYSCALLS, SECCOMP_TABLE[os.uname().machine][1]))
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
