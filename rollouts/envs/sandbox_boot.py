"""Init process of one sandbox: builds the read-only root, runs the program, reports how it ended.

Run by ``rollouts.envs.sandbox`` as ``unshare --mount --pid --net ... --fork -- python -I -S sandbox_boot.py``,
so it starts as PID 1 of fresh namespaces, still privileged there. It reads a length-prefixed JSON spec
from stdin (the bytes after it are the program's stdin), checks it is in the run's cgroup if the host made one
(the host moved it there before sending the spec) and makes that its cgroup namespace's root, mounts a
tmpfs root holding read-only binds of the system directories and the interpreter, a fresh /proc, a few device
nodes, the run's cgroup (read-only) and a size-limited work dir, then forks the program: chroot, rlimits,
no_new_privs, an unprivileged uid, no capability at all and a seccomp filter.

It stays outside the chroot as the namespace's init because PID 1 is what the host kills to end the
sandbox: when it exits, the kernel kills every process left in the namespace before the host can reap
it, so no descendant outlives a run. One JSON line on the status descriptor says how the program ended.
Standard library only: it runs with ``-I -S`` before anything else is readable.
"""

import ctypes
import errno
import json
import os
import resource
import signal
import sys
import time

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
CLONE_NEWUSER = 0x10000000
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 4, 24, 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
DEVICES = ("null", "zero", "full", "random", "urandom")
# a remount inside a user namespace must keep these flags of the source mount or the kernel refuses it
LOCKED_FLAGS = os.ST_NOEXEC | os.ST_NOATIME | os.ST_NODIRATIME | os.ST_RELATIME

# Syscalls the program never needs, each a known escape, covert channel or way to hold memory no rlimit
# counts: kernel keyrings (they outlive the run, so one program could leave state for the next under the same
# uid), tracing and other processes' memory, mount and namespace changes, the large kernel surfaces of bpf,
# perf, userfaultfd and io_uring, SysV IPC (segments and queues stay in the IPC namespace after their creator
# exits and count against no rlimit) and memfd (its pages escape RLIMIT_AS once unmapped, and RLIMIT_FSIZE).
DENIED_SYSCALLS = ("add_key", "request_key", "keyctl", "ptrace", "process_vm_readv", "process_vm_writev",
                   "mount", "umount2", "pivot_root", "unshare", "setns", "bpf", "perf_event_open",
                   "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
                   "shmget", "shmat", "shmctl", "shmdt", "msgget", "msgsnd", "msgrcv", "msgctl",
                   "semget", "semop", "semctl", "semtimedop", "memfd_create", "memfd_secret")
# socket() and socketpair() only for these families; any other (AF_VSOCK reaches the hypervisor's port space,
# which no network namespace separates; AF_PACKET, AF_ALG, ...: kernel surface) fails with EAFNOSUPPORT
ALLOWED_SOCKET_FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16}
SOCKET_SYSCALLS = ("socket", "socketpair")
SECCOMP_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}  # AUDIT_ARCH_*; both little-endian
SYSCALL_NUMBERS = {
    "x86_64": dict(add_key=248, request_key=249, keyctl=250, ptrace=101, process_vm_readv=310,
                   process_vm_writev=311, mount=165, umount2=166, pivot_root=155, unshare=272, setns=308,
                   bpf=321, perf_event_open=298, userfaultfd=323, io_uring_setup=425, io_uring_enter=426,
                   io_uring_register=427, shmget=29, shmat=30, shmctl=31, shmdt=67, msgget=68, msgsnd=69,
                   msgrcv=70, msgctl=71, semget=64, semop=65, semctl=66, semtimedop=220, memfd_create=319,
                   memfd_secret=447, socket=41, socketpair=53),
    "aarch64": dict(add_key=217, request_key=218, keyctl=219, ptrace=117, process_vm_readv=270,
                    process_vm_writev=271, mount=40, umount2=39, pivot_root=41, unshare=97, setns=268,
                    bpf=280, perf_event_open=241, userfaultfd=282, io_uring_setup=425, io_uring_enter=426,
                    io_uring_register=427, shmget=194, shmat=196, shmctl=195, shmdt=197, msgget=186, msgsnd=189,
                    msgrcv=188, msgctl=187, semget=190, semop=193, semctl=191, semtimedop=192, memfd_create=279,
                    memfd_secret=447, socket=198, socketpair=199),
}
X32_SYSCALL_BIT = 0x40000000
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x06
# struct seccomp_data: nr (4 bytes), arch (4), instruction_pointer (8), then args[6] of 8 bytes each
SECCOMP_NR, SECCOMP_ARCH_OFFSET, SECCOMP_ARG0_LOW = 0, 4, 16
CLONE_NEWCGROUP = 0x02000000
CGROUP_MOUNT = "/sys/fs/cgroup"

libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """mount(2), raising OSError that names the target."""
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target} ({fstype or 'bind'}): {os.strerror(err)}")


def bind_readonly(source: str, target: str) -> None:
    """Bind ``source`` at ``target``, then remount the bind read-only, nosuid, nodev (a bind ignores ro at first)."""
    mount(source, target, None, MS_BIND)
    locked = os.statvfs(source).f_flag & LOCKED_FLAGS
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | locked)


def read_spec() -> dict:
    """The spec's 8-byte length then its JSON; reads exactly that much so the rest of stdin stays the program's."""

    def read_exact(n: int) -> bytes:
        parts = []
        while n:
            chunk = os.read(0, n)
            if not chunk:
                raise EOFError("stdin closed inside the sandbox spec")
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    return json.loads(read_exact(int.from_bytes(read_exact(8), "big")))


def build_root(spec: dict) -> None:
    """Populate the new root: system binds, /dev, /proc, the work dir with the program; then seal it read-only."""
    root = spec["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below may propagate back to the host
    mount("sandbox-root", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for path in spec["binds"]:
        if os.path.islink(path):
            os.makedirs(root + os.path.dirname(path), exist_ok=True)
            os.symlink(os.readlink(path), root + path)
        elif os.path.isdir(path):
            os.makedirs(root + path, exist_ok=True)
            bind_readonly(path, root + path)
    os.makedirs(root + "/dev")
    for name in DEVICES:
        open(f"{root}/dev/{name}", "wb").close()
        mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
        mount(None, f"{root}/dev/{name}", None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NOEXEC)
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{root}/dev/{name}")
    os.symlink("/proc/self/fd", f"{root}/dev/fd")
    os.makedirs(root + "/proc")
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    work = root + spec["workdir"]
    os.makedirs(work)
    owner = spec["tmpfs_owner"]
    opts = f"size={spec['tmpfs_bytes']},nr_inodes=16384,mode=0700,uid={owner},gid={owner}"
    mount("sandbox-work", work, "tmpfs", MS_NOSUID | MS_NODEV, opts)
    with open(f"{work}/main.py", "w", encoding="utf-8") as f:
        f.write(spec["source"])
    os.chown(f"{work}/main.py", owner, owner)
    if spec["cgroup"]:
        mount_cgroup(root, spec["cgroup"]["mounts"])
    mount(None, root, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def enter_run_cgroup(cgroup: dict) -> None:
    """Check that the host moved this init into the run's cgroup (the program inherits it), then make that the
    cgroup namespace's root, so /proc/self/cgroup inside reads "/" like the mounted view of it."""
    with open("/proc/self/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    paths = {c: path for _, controllers, path in lines for c in (controllers.split(",") if controllers else [""])}
    for name in cgroup["mounts"]:  # the controller of each mount ("" for v2) names its /proc/self/cgroup line
        if os.path.basename(paths.get(name, "")) != cgroup["leaf"]:
            raise OSError(f"the init is not in the run's cgroup {cgroup['leaf']}: {name or 'v2'} at {paths.get(name)}")
    if libc.unshare(CLONE_NEWCGROUP) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWCGROUP) after joining the run's cgroup")


def mount_cgroup(root: str, mounts: dict[str, str]) -> None:
    """The run's own cgroup, read-only, at /sys/fs/cgroup[/<controller>]: the program can read its limits."""
    for name, leaf in mounts.items():
        target = os.path.join(root + CGROUP_MOUNT, name)
        os.makedirs(target)
        bind_readonly(leaf, target)


def enter_nested_userns(uid: int) -> None:
    """Unprivileged host: become ``uid`` in a child user namespace whose only mapping is us (outer root)."""
    if libc.unshare(CLONE_NEWUSER) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER) for the program")
    for name, text in (("uid_map", f"{uid} 0 1"), ("setgroups", "deny"), ("gid_map", f"{uid} 0 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def drop_privileges(uid: int, clear_groups: bool) -> None:
    """no_new_privs, empty bounding set, ``uid``/gid and no capability left in any set (checked by the probe)."""
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    for cap in range(last_cap + 1):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap})")
    if clear_groups:
        os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    # leaving uid 0 clears permitted and effective, but not inheritable, and in a nested user namespace we
    # were never uid 0 there; zeroing every set by hand covers both cases
    header, data = CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset(0)")


def seccomp_filter(machine: str) -> list[tuple[int, int, int, int]]:
    """The classic-BPF program as (code, jump-if-true, jump-if-false, k): other ABIs and DENIED_SYSCALLS fail with
    EPERM, socket families outside ALLOWED_SOCKET_FAMILIES with EAFNOSUPPORT, everything else is allowed."""
    if machine not in SYSCALL_NUMBERS:
        raise OSError(f"no seccomp syscall table for machine {machine!r}; known: {sorted(SYSCALL_NUMBERS)}")
    numbers = SYSCALL_NUMBERS[machine]
    # (code, k, jump-if-true, jump-if-false) with jumps as labels (None: next instruction); a str is a label
    steps: list = [(BPF_LD_W_ABS, SECCOMP_ARCH_OFFSET, None, None),
                   (BPF_JEQ_K, SECCOMP_ARCH[machine], None, "deny"),
                   (BPF_LD_W_ABS, SECCOMP_NR, None, None)]
    if machine == "x86_64":  # x32 numbers reach the same kernel code under other numbers
        steps.append((BPF_JGE_K, X32_SYSCALL_BIT, "deny", None))
    steps += [(BPF_JEQ_K, numbers[name], "deny", None) for name in DENIED_SYSCALLS]
    steps += [(BPF_JEQ_K, numbers[name], "family", None) for name in SOCKET_SYSCALLS]
    steps += [(BPF_RET_K, SECCOMP_RET_ALLOW, None, None), "family",
              # the family is an int: the kernel reads only the low 32 bits of the argument, so do we
              (BPF_LD_W_ABS, SECCOMP_ARG0_LOW, None, None)]
    steps += [(BPF_JEQ_K, family, "allow", None) for family in ALLOWED_SOCKET_FAMILIES.values()]
    steps += [(BPF_RET_K, SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT, None, None),
              "allow", (BPF_RET_K, SECCOMP_RET_ALLOW, None, None),
              "deny", (BPF_RET_K, SECCOMP_RET_ERRNO | errno.EPERM, None, None)]
    labels, program = {}, []
    for step in steps:
        if isinstance(step, str):
            labels[step] = len(program)
        else:
            program.append(step)
    offset = lambda target, at: 0 if target is None else labels[target] - at - 1  # noqa: E731
    return [(code, offset(jt, i), offset(jf, i), k) for i, (code, k, jt, jf) in enumerate(program)]


def install_seccomp() -> None:
    """Install ``seccomp_filter`` for this machine on the calling process (inherited by all it starts)."""
    steps = seccomp_filter(os.uname().machine)
    program = (SockFilter * len(steps))(*(SockFilter(code, jt, jf, k) for code, jt, jf, k in steps))
    fprog = SockFprog(len(steps), program)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def exec_program(spec: dict, status_fd: int) -> None:
    """Child side of the fork: confine this process to the new root, drop everything, exec the program."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    # out of memory, the kernel kills the program's processes before the init, whose death would end the run
    # without a report (raising one's own score needs no privilege; lowering the init's would need
    # CAP_SYS_RESOURCE, which a container or a nested user namespace may lack)
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")
    os.setsid()  # kill(0, ...) from the program must not reach the host's process group
    if spec["nested_userns"]:
        enter_nested_userns(spec["uid"])
    os.chroot(spec["root"])
    os.chdir(spec["workdir"])
    for name, value in spec["rlimits"].items():
        resource.setrlimit(getattr(resource, name), tuple(value))
    # a user namespace without setgroups permission cannot clear groups: they read as the overflow gid
    drop_privileges(spec["uid"], clear_groups=not spec["nested_userns"])
    install_seccomp()
    os.set_inheritable(status_fd, False)
    argv = [spec["python"], "-I", "-S", "-B", "-u", "main.py"]
    os.execve(argv[0], argv, spec["env"])


def wait_program(child: int, backstop_s: float) -> dict:
    """Reap every child (orphans land on us), return the program's end; give up after ``backstop_s``."""
    deadline = time.monotonic() + backstop_s
    while True:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == child:
                cpu = usage.ru_utime + usage.ru_stime
                if os.WIFSIGNALED(status):
                    return {"signal": os.WTERMSIG(status), "cpu": cpu}
                return {"exit": os.WEXITSTATUS(status), "cpu": cpu}
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            # the host should have killed us already; it may be gone, so the namespace ends itself
            return {"wall": True}
        signal.sigtimedwait({signal.SIGCHLD}, remaining)


def main() -> None:
    os.umask(0o022)
    status_fd = int(sys.argv[1])
    report = lambda record: os.write(status_fd, (json.dumps(record) + "\n").encode())  # noqa: E731
    try:
        spec = read_spec()
        if spec["cgroup"]:
            enter_run_cgroup(spec["cgroup"])
        build_root(spec)
        libc.sethostname(b"sandbox", 7)
    except Exception as e:  # noqa: BLE001 -- any setup failure is reported to the host as data, then we exit
        report({"setup_error": f"{type(e).__name__}: {e}"})
        sys.exit(1)
    # the program must not read our memory or follow /proc/1/root back to the host's filesystem
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    child = os.fork()
    if child == 0:
        try:
            exec_program(spec, status_fd)
        except BaseException as e:  # noqa: BLE001 -- never return into the init's code from the child
            report({"setup_error": f"exec of the program: {type(e).__name__}: {e}"})
        os._exit(127)
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    report(wait_program(child, spec["backstop_seconds"]))


if __name__ == "__main__":
    main()
