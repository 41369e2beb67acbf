"""`areal submit --slurm` through a real one-node Slurm cluster started on this machine (munged, slurmctld and
slurmd from Debian's munge and slurm-wlm; files under a temporary directory; the daemons stopped by pid at the end).

The ci_tiny preset runs to COMPLETED, leaving summary.json and a checkpoint; while it runs, the job's Ray token file
exists with mode 0600 and every process of the job that can be read runs with RAY_AUTH_MODE=token and that file;
when it ends the file is gone. A second job stopped with `areal stop` ends CANCELLED, with none of its processes
left behind.

Opt-in (AREAL_E2E_SLURM=1, as root: slurmd starts the jobs): ~5 minutes on 2 cores (docs/cluster.md).
    AREAL_E2E_SLURM=1 .venv/bin/python -m pytest -q -s tests/e2e/test_slurm_real.py
"""

import json
import os
import random
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from launch.cli import main

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("AREAL_E2E_SLURM") != "1",
                       reason="opt-in (AREAL_E2E_SLURM=1): starts Slurm daemons and runs two jobs, minutes"),
    pytest.mark.skipif(any(shutil.which(d) is None for d in DAEMONS),
                       reason="needs Slurm and munge (Debian: apt-get install slurm-wlm munge)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="slurmd must run as root to start jobs"),
]
FINAL = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
ACTOR = re.compile(r"ray::(RolloutActor|LearnerRank)")  # a Ray worker's title once it holds one of the run's actors
RUN = ["experiment=ci_tiny", "logging.wandb_mode=disabled", "logging.tensorboard=false"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(root: Path, node: str) -> str:
    """A one-node cluster: ``node`` is `slurmd -C`'s line (this machine's name, CPUs, RealMemory); no cgroups,
    processes tracked by parentage (proctrack/linuxproc), no accounting (scontrol keeps ended jobs for an hour)."""
    return f"""ClusterName=areal-e2e
SlurmctldHost={socket.gethostname()}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/run/munge.socket
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=10
MinJobAge=3600
FirstJobId={random.randint(10_000, 90_000)}
{node} State=UNKNOWN
PartitionName=e2e Nodes={node.split()[0].split('=')[1]} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    """The running cluster: its directory, the node's CPUs, and the jobs a test submitted (cancelled at the end)."""

    root: Path
    cpus: int
    jobs: list[str] = field(default_factory=list)

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-20:])
                         for p in sorted((self.root / "log").glob("*")))


@pytest.fixture(scope="module")
def slurm_cluster():
    # not under pytest's tmp_path: munged wants every directory above its socket searchable by all, and pytest's
    # base directory is private
    root = Path(tempfile.mkdtemp(prefix="areal-slurm-"))
    root.chmod(0o755)
    for name in ("key", "run", "state", "spool", "log"):
        (root / name).mkdir(mode=0o700 if name == "key" else 0o755)
    subprocess.run(["mungekey", "--create", f"--keyfile={root}/key/munge.key"], check=True, capture_output=True)
    node = subprocess.run(["slurmd", "-C"], check=True, capture_output=True, text=True).stdout.splitlines()[0]
    (root / "slurm.conf").write_text(slurm_conf(root, node))
    saved = {k: os.environ.pop(k, None) for k in ("SLURM_CONF", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                                                   "RAY_AUTH_TOKEN_PATH")}
    os.environ["SLURM_CONF"] = str(root / "slurm.conf")  # for every Slurm command the CLI (and the jobs) run
    daemons = []
    cluster = SlurmCluster(root, int(re.search(r"CPUs=(\d+)", node).group(1)))
    try:
        for args in (["munged", "-F", f"--key-file={root}/key/munge.key", f"--socket={root}/run/munge.socket",
                      f"--pid-file={root}/run/munged.pid", f"--log-file={root}/log/munged.log",
                      f"--seed-file={root}/key/munged.seed"],
                     ["slurmctld", "-D"], ["slurmd", "-D"]):
            with open(root / "log" / f"{args[0]}.out", "w") as out:
                daemons.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT))
            if args[0] == "munged":
                wait_for(lambda: (root / "run/munge.socket").exists(), 30, "munged's socket")
        wait_for(lambda: node_state() == "idle", 60, f"the node to be idle in sinfo\n{cluster.log_tail()}")
        yield cluster
    finally:
        for job_id in cluster.jobs:  # a failed test may leave one running
            subprocess.run(["scancel", job_id], capture_output=True)
        if cluster.jobs:
            wait_for(lambda: not any(job_processes(j) for j in cluster.jobs), 60, "the jobs' processes to end",
                     fail=False)
        for daemon in reversed(daemons):
            daemon.terminate()
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        for job_id in cluster.jobs:
            shutil.rmtree(f"/tmp/areal-ray-{job_id}", ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


def node_state() -> str:
    return subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout.strip()


def wait_for(check, timeout_s: float, what: str, fail: bool = True, poll_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            if fail:
                pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
            return False
        time.sleep(poll_s)
    return True


@dataclass
class JobProcess:
    """A process of a Slurm job as /proc shows it; ``env`` is None where the process rewrote that memory (Ray's
    workers set their title over it)."""

    pid: int
    command: str
    env: dict[str, str] | None


def job_processes(job_id: str) -> list[JobProcess]:
    """The processes of Slurm job ``job_id``: those whose environment names it, and their descendants."""
    envs, parents, commands = {}, {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "environ").read_bytes()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # ended meanwhile
            continue
        pid = int(entry.name)
        pairs = [item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item]
        envs[pid] = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs} or None
        parents[pid], commands[pid] = parent, command
    members = {pid for pid, env in envs.items() if env and env.get("SLURM_JOB_ID") == job_id}
    while True:
        children = {pid for pid, parent in parents.items() if parent in members} - members
        if not children:
            break
        members |= children
    return [JobProcess(pid, commands[pid], envs[pid]) for pid in sorted(members)]


def report(capsys, line: str) -> None:
    """A line of the test's record (docs/cluster.md), shown even when pytest captures output."""
    with capsys.disabled():
        print(f"\n[slurm e2e] {line}")


def cli(capsys, *argv) -> str:
    assert main(list(argv)) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def submit(cluster: SlurmCluster, capsys, tmp_path: Path, name: str) -> tuple[str, Path, Path]:
    """`areal submit --slurm` of the ci_tiny preset into a fresh out_dir; (job id, out_dir, token file)."""
    out_dir, tokens = tmp_path / f"{name}-run", tmp_path / f"{name}-tokens"
    printed = cli(capsys, "submit", "--slurm", "--nodes", "1", "--cpus-per-node", str(cluster.cpus), "--time",
                  "00:40:00", "--job-name", f"areal-{name}", "--out-dir", str(out_dir), "--log-dir",
                  str(tmp_path / "logs"), "--token-dir", str(tokens), *RUN)
    job_id = printed.split()[1]
    cluster.jobs.append(job_id)
    assert f"areal logs {job_id} --follow" in printed
    return job_id, out_dir, tokens / f"ray-{job_id}.token"


def state(capsys, job_id: str) -> str:
    return cli(capsys, "status", job_id).split()[1]


@dataclass
class Watch:
    """What was seen of a job while it ran: its states, the token file's modes, and its processes."""

    states: list[str] = field(default_factory=list)
    token_modes: set[tuple[int, int]] = field(default_factory=set)  # (file mode, directory mode)
    processes: dict[int, JobProcess] = field(default_factory=dict)


def observe(watch: Watch, capsys, job_id: str, token_file: Path) -> str:
    current = state(capsys, job_id)
    if not watch.states or watch.states[-1] != current:
        watch.states.append(current)
    try:
        watch.token_modes.add((stat.S_IMODE(token_file.stat().st_mode), stat.S_IMODE(token_file.parent.stat().st_mode)))
    except FileNotFoundError:
        pass
    for proc in job_processes(job_id):
        if proc.pid not in watch.processes or watch.processes[proc.pid].env is None:
            watch.processes[proc.pid] = proc
    return current


def is_batch_shell(proc: JobProcess) -> bool:
    # the script's own shell started before it exported the token settings; all it starts afterwards inherits them
    return proc.command.endswith("slurm_script")


def test_a_submitted_ci_tiny_run_completes_with_the_jobs_private_ray_token(slurm_cluster, tmp_path, capsys):
    started = time.monotonic()
    job_id, out_dir, token_file = submit(slurm_cluster, capsys, tmp_path, "run")
    watch = Watch()
    deadline = time.monotonic() + 1800
    while observe(watch, capsys, job_id, token_file) not in FINAL and time.monotonic() < deadline:
        time.sleep(2)
    seconds = time.monotonic() - started
    logs = cli(capsys, "logs", job_id)
    assert watch.states[-1] == "COMPLETED", f"{watch.states}\n{logs[-4000:]}\n{slurm_cluster.log_tail()}"
    assert "RUNNING" in watch.states
    assert json.loads((out_dir / "summary.json").read_text())["steps"] == 4
    assert list((out_dir / "checkpoints").glob("step-*"))
    assert "Ray token authentication on" in logs and "held-out accuracy" in logs

    # the token: private while the job ran, gone when it ended
    assert watch.token_modes == {(0o600, 0o700)}, watch.token_modes
    assert not token_file.exists()
    # every process of the job (Ray head, GCS, raylet, workers, the driver, the srun steps) was started with the
    # token; a process whose environment memory Ray's title overwrote is a child of one checked here, and with token
    # authentication on a Ray process without the token could not have joined the cluster at all
    checked = [p for p in watch.processes.values() if p.env is not None and not is_batch_shell(p)]
    for proc in checked:
        assert (proc.env.get("RAY_AUTH_MODE"), proc.env.get("RAY_AUTH_TOKEN_PATH")) == ("token", str(token_file)), \
            proc.command
    commands = " | ".join(p.command for p in checked)
    for part in ("ray start --head", "gcs_server", "raylet", "areal train"):
        assert part in commands, f"no {part!r} among the job's processes: {commands[:3000]}"
    assert Path(f"/tmp/areal-ray-{job_id}/ray_current_cluster").is_file()  # Ray's files in the job's own directory
    wait_for(lambda: not job_processes(job_id), 60, f"job {job_id}'s processes to end")
    report(capsys, f"job {job_id}: {' -> '.join(watch.states)} in {seconds:.0f}s, {summary_line(out_dir)}; token "
                   f"file modes seen {sorted((oct(f), oct(d)) for f, d in watch.token_modes)}, removed at the end; "
                   f"{len(checked)} processes checked for the token, {len(watch.processes) - len(checked)} not "
                   "readable or the batch shell")


def test_areal_stop_cancels_a_running_job_and_leaves_none_of_its_processes(slurm_cluster, tmp_path, capsys):
    started = time.monotonic()
    job_id, out_dir, token_file = submit(slurm_cluster, capsys, tmp_path, "stopped")
    watch = Watch()
    wait_for(lambda: observe(watch, capsys, job_id, token_file) in FINAL
             or any(ACTOR.search(p.command) for p in job_processes(job_id)), 600, "the job's Ray actors", poll_s=2)
    assert watch.states[-1] == "RUNNING", watch.states
    up = time.monotonic() - started
    seen = len(job_processes(job_id))
    assert cli(capsys, "stop", job_id) == f"{job_id}: stop requested\n"
    wait_for(lambda: observe(watch, capsys, job_id, token_file) in FINAL, 120, "the stopped job to end")
    assert watch.states[-1] == "CANCELLED", watch.states
    assert wait_for(lambda: not job_processes(job_id), 90, "the stopped job's processes to end", fail=False), \
        [p.command for p in job_processes(job_id)]
    gone = time.monotonic() - started - up
    assert watch.token_modes == {(0o600, 0o700)} and not token_file.exists()
    assert not (out_dir / "summary.json").exists()
    assert cli(capsys, "stop", job_id) == f"{job_id}: already ended\n"
    report(capsys, f"job {job_id}: {' -> '.join(watch.states)}; `areal stop` {up:.0f}s after submission (Ray actors "
                   f"up, {seen} processes), none left {gone:.0f}s later; token file removed")


def summary_line(out_dir: Path) -> str:
    summary = json.loads((out_dir / "summary.json").read_text())
    first, last = summary["initial_eval"], summary["final_eval"]
    return f"{summary['steps']} steps, held-out accuracy {first:.3f} -> {last:.3f}, {Path(summary['checkpoint']).name}"
