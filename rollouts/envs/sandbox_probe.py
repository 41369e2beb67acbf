"""Start-up probe of the sandbox: proves each isolation property by running a program inside it.

A sandbox whose namespaces silently failed would still run code, so ``Sandbox`` trusts nothing it has not
seen hold from the inside on this host: the probe program reports each check, and every failed check is
named in the error together with its fix.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

if TYPE_CHECKING:
    from rollouts.envs.sandbox import SandboxResult

PROBE_PROGRAM = r'''
import ctypes, json, os, resource, socket, sys

args = json.load(sys.stdin)

def fails(action):
    try:
        action()
    except OSError:
        return True
    return False

def write(path):
    with open(path, "w") as f:
        f.write("x")

def connect(address):
    socket.create_connection(address, timeout=2).close()

def refused(call, *args):
    libc = ctypes.CDLL(None, use_errno=True)
    return call(libc)(*args) == -1 and ctypes.get_errno() != 0

def in_own_cgroup(cgroup):
    if cgroup is None:
        return True
    read = lambda name: open("/sys/fs/cgroup/" + name).read().split()
    limits = all(read(name) == [str(value)] for name, value in cgroup["limits"].items())
    return limits and all(str(os.getpid()) in read(name) for name in cgroup["procs"])

def process_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False

status = dict(line.split(":", 1) for line in open("/proc/self/status"))
caps = [int(status[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")]
pids = [p for p in os.listdir("/proc") if p.isdigit()]
checks = {
    "network_interfaces": [name for _, name in socket.if_nameindex()] == ["lo"],
    "network_host_port": fails(lambda: connect(("127.0.0.1", args["port"]))),
    "network_outside": fails(lambda: connect(("192.0.2.1", 80))),
    "project_file": fails(lambda: open(args["project_file"], "rb").read(1)),
    "write_outside": all(fails(lambda p=p: write(p)) for p in args["outside"]),
    "write_workdir": not fails(lambda: write("probe.txt")),
    "uid": 0 not in (os.getuid(), os.geteuid(), os.getgid(), os.getegid()),
    "capabilities": caps == [0] * 5,
    "no_new_privs": status["NoNewPrivs"].strip() == "1",
    "seccomp": status["Seccomp"].strip() == "2",
    "pid_namespace": os.getpid() <= 3 and len(pids) <= 4 and process_gone(args["host_pid"]),
    "rlimits": all(list(resource.getrlimit(getattr(resource, k))) == v for k, v in args["rlimits"].items()),
    # AF_PACKET, AF_ALG, AF_VSOCK: outside the allowed families; socketpair(AF_UNIX) and AF_INET6 within them
    "socket_families": all(fails(lambda f=f: socket.socket(f, socket.SOCK_SEQPACKET).close()) for f in (17, 38, 40))
                       and not fails(lambda: [s.close() for s in socket.socketpair()])
                       and not fails(lambda: socket.socket(socket.AF_INET6).close()),
    "sysv_ipc": refused(lambda c: c.shmget, 0, 1 << 20, 0o1600) and refused(lambda c: c.msgget, 0, 0o1600)
                and refused(lambda c: c.semget, 0, 1, 0o1600),
    "memfd": fails(lambda: os.memfd_create("probe")),
    "cgroup": in_own_cgroup(args["cgroup"]),
}
print(json.dumps(checks))
'''

FIXES = {
    "namespaces": "the sandbox could not be built: it needs Linux, util-linux `unshare` and either root or "
                  "unprivileged user namespaces (sysctl user.max_user_namespaces > 0; on Debian/Ubuntu "
                  "kernel.unprivileged_userns_clone=1 and kernel.apparmor_restrict_unprivileged_userns=0); in a "
                  "container, allow unshare and mount (e.g. docker --privileged or a seccomp/AppArmor profile)",
    "network_interfaces": "the program sees host network interfaces: no new network namespace",
    "network_host_port": "the program reached a port on the host's loopback: no new network namespace",
    "network_outside": "the program opened a connection off the host: no new network namespace",
    "project_file": "the program read a project file: the private root (mount namespace + chroot) is not in effect",
    "write_outside": "the program wrote outside its work dir: the read-only root is not in effect",
    "write_workdir": "the program cannot write its own work dir: the tmpfs work dir is missing or not owned by it",
    "uid": "the program runs as uid or gid 0: the uid drop failed",
    "capabilities": "the program holds capabilities: the capability drop failed",
    "no_new_privs": "no_new_privs is not set: setuid binaries could raise privileges",
    "seccomp": "no seccomp filter: the program could use kernel keyrings (state that outlives the run), "
               "ptrace, bpf, io_uring",
    "pid_namespace": "the program sees or reaches host processes: no new PID namespace",
    "rlimits": "the rlimits read inside differ from those requested",
    "socket_families": "the program opened a socket of a family outside AF_UNIX, AF_INET, AF_INET6, AF_NETLINK "
                       "(AF_VSOCK reaches the hypervisor's ports, which no namespace separates), or cannot open "
                       "an allowed one: the seccomp socket filter is not in effect",
    "sysv_ipc": "the program created a SysV shared memory segment, message queue or semaphore (kept by the "
                "kernel after the process exits, counted by no rlimit): the seccomp filter is not in effect",
    "memfd": "the program created a memfd (its pages escape RLIMIT_AS and RLIMIT_FSIZE): the seccomp filter "
             "is not in effect",
    "cgroup": "the program is not in its per-run cgroup with the memory and pids limits set, though this "
              "process could create one (a limit did not take, or the cgroup is not the program's): check the "
              "cgroup tree this process runs in, or make it read-only to this process to run with per-process "
              "limits only (docs/sandbox.md)",
}


@dataclass(frozen=True)
class ProbeReport:
    """Which isolation checks failed on this host (none: ``ok``), each with its fix."""

    failures: tuple[str, ...]
    detail: str = ""
    complete: bool = True
    """Whether the probe ran to the end (each check executed); an incomplete one says nothing of the host."""

    @property
    def ok(self) -> bool:
        return not self.failures

    @classmethod
    def setup_failed(cls, detail: str) -> "ProbeReport":
        """The probe could not run: the sandbox was not built, or the probe program did not finish."""
        return cls(("namespaces",), detail, complete=False)

    def explain(self) -> str:
        """The error message: every failed check, why it matters and the fix, then the opt-out."""
        lines = [f"sandbox isolation probe failed on this host ({len(self.failures)} check(s)):"]
        lines += [f"  - {name}: {FIXES.get(name, 'unexpected probe failure')}" for name in self.failures]
        if self.detail:
            lines.append(f"  detail: {self.detail}")
        lines.append("Fix the host, or pass Sandbox(insecure=True) on a development machine only (it applies "
                     "rlimits and timeouts but no isolation). See docs/sandbox.md.")
        return "\n".join(lines)


async def check_isolation(run: Callable[[str, bytes], Awaitable["SandboxResult"]], rlimits: dict[str, list[int]],
                          cgroup: dict | None) -> ProbeReport:
    """Run the probe program with ``run`` and report the checks that did not hold.

    ``rlimits`` are those the program must read back; ``cgroup`` (None without cgroups) names the files of its
    own cgroup as mounted in the sandbox: "limits" (file -> value) and "procs" (files that must list it)."""
    here = os.path.dirname(os.path.abspath(__file__))
    name = f"areal-sandbox-probe-{os.getpid()}"
    outside = [f"/{name}", f"/tmp/{name}", f"/usr/{name}", f"{here}/{name}", f"/proc/{name}", f"/dev/{name}"]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        args = {"port": listener.getsockname()[1], "project_file": os.path.abspath(__file__),
                "outside": outside, "host_pid": os.getpid(), "rlimits": rlimits, "cgroup": cgroup}
        try:
            result = await run(PROBE_PROGRAM, json.dumps(args).encode())
        finally:
            for path in outside:  # a broken sandbox may have written them: leave the host as it was
                if os.path.isfile(path):
                    os.unlink(path)
        listener.setblocking(False)
        try:
            listener.accept()[0].close()
            reached_host = True
        except BlockingIOError:
            reached_host = False
    try:
        checks = json.loads(result.stdout) if result.status == "ok" else None
    except ValueError:
        checks = None
    if checks is None:
        return ProbeReport.setup_failed(f"probe program ended {result.status}: {result.stderr[-1000:]}")
    checks["network_host_port"] = checks["network_host_port"] and not reached_host
    return ProbeReport(tuple(name for name, held in checks.items() if not held))
