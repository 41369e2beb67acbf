"""Slurm jobs from the `areal` command line: submit the rendered sbatch script, then status, logs and stop by the
job id, through Slurm's own client commands (sbatch, scontrol, sacct, scancel), so they work wherever those do.

The run's config is validated here before anything is sent: a typo fails in a second on the login node, not after
the job waited in the queue. Every failure is one line naming the fix: a Slurm command missing, slurmctld not
answering, a job id Slurm does not know.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from launch.slurm.render import SlurmJob, render

JOB_ID = re.compile(r"\d+(_\d+)?")  # what sbatch prints (an array task: JOB_TASK); Ray Jobs ids are never digits
# Slurm's base states of a job that runs no more
FINAL = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE")
UNREACHABLE = "Unable to contact slurm controller"
UNKNOWN = "Invalid job id specified"
# a key of scontrol's one-line record; its value runs up to the next key (values such as Reason may hold spaces)
RECORD_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


class SlurmError(RuntimeError):
    """A Slurm command failed; the message is one line naming the fix."""


def is_slurm_job_id(job_id: str) -> bool:
    """Whether ``job_id`` names a Slurm job (digits, as `areal submit --slurm` prints) rather than a Ray Jobs one."""
    return bool(JOB_ID.fullmatch(job_id))


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no message")


def run(command: str, *args: str, stdin: str | None = None, timeout_s: float = 120) -> subprocess.CompletedProcess:
    """Run a Slurm client command; SlurmError when it is not installed here or slurmctld does not answer."""
    if shutil.which(command) is None:
        raise SlurmError(f"{command} not found on PATH: run this on a node with Slurm's client commands (a login "
                         "node), or write the script with `areal slurm` and sbatch it there")
    try:
        done = subprocess.run([command, *args], input=stdin, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{command} got no answer in {timeout_s:.0f}s: slurmctld is not answering; check "
                         "`scontrol ping`") from None
    if UNREACHABLE in done.stderr:
        raise SlurmError(f"slurmctld is not answering ({first_line(done.stderr)}): check `scontrol ping`, "
                         "and that SLURM_CONF (or /etc/slurm/slurm.conf) names this cluster")
    return done


def unknown(job_id: str) -> SlurmError:
    return SlurmError(f"unknown Slurm job {job_id}: slurmctld does not know it (it forgets a finished job after "
                      f"MinJobAge) and accounting has no record; `squeue --me` lists yours")


def run_overrides(job: SlurmJob) -> list[str]:
    """The overrides `areal train` gets in the job, in the script's order (a later key wins)."""
    return [f"out_dir={job.out_dir}", *job.overrides]


def validate(job: SlurmJob):
    """The run's TrainConfig, composed here from the job's overrides; ConfigError (nothing sent) when they fail.

    ``local=False``: the run happens on the cluster, so what only its nodes hold (out_dir, data, models) is not
    looked for here."""
    from launch.preflight import validate as preflight

    return preflight(run_overrides(job), local=False)[0]


def submit(job: SlurmJob) -> str:
    """sbatch the rendered script (on stdin: no script file is left behind); returns the Slurm job id."""
    try:
        Path(job.log_dir).mkdir(parents=True, exist_ok=True)  # Slurm does not create the output directory
    except OSError as exc:
        raise SlurmError(f"--log-dir {job.log_dir}: cannot create it ({exc.strerror}); give a directory you can "
                         "write (Slurm writes the job's output there)") from None
    done = run("sbatch", "--parsable", stdin=render(job))
    if done.returncode != 0:
        raise SlurmError(f"sbatch refused the job ({first_line(done.stderr)}): check --nodes, --cpus-per-node, "
                         "--gpus-per-node, --time and --partition against `sinfo`")
    job_id = done.stdout.strip().split(";")[0]  # --parsable: JOBID or JOBID;CLUSTER
    if not is_slurm_job_id(job_id):
        raise SlurmError(f"sbatch printed {done.stdout.strip()!r}, not a job id: check that `sbatch` is Slurm's")
    return job_id


def parse_record(line: str) -> dict[str, str]:
    """scontrol's ``Key=value Key=value`` record as a dict."""
    keys = list(RECORD_KEY.finditer(line))
    ends = [k.start() for k in keys[1:]] + [len(line)]
    return {k.group(1): line[k.end():end].strip() for k, end in zip(keys, ends)}


def record(job_id: str) -> dict[str, str]:
    """slurmctld's record of the job (JobState, Reason, ExitCode, StdOut, ...); {} once it has forgotten it."""
    done = run("scontrol", "show", "job", "--oneliner", job_id)
    if done.returncode != 0:
        if UNKNOWN in done.stderr:
            return {}
        raise SlurmError(f"scontrol show job {job_id} failed ({first_line(done.stderr)}): check `scontrol ping`")
    return parse_record(first_line(done.stdout))


def status(job_id: str) -> tuple[str, str]:
    """(state, detail): the job's Slurm state (PENDING, RUNNING, COMPLETED, CANCELLED, FAILED, ...) and why."""
    info = record(job_id)
    if not info:
        return accounted_status(job_id)
    state = info.get("JobState", "UNKNOWN")
    if state in FINAL:
        return state, f"exit code {info.get('ExitCode', '?')}"
    reason = info.get("Reason", "None")
    return state, "" if reason in ("None", "") else reason


def accounted_status(job_id: str) -> tuple[str, str]:
    """The state from Slurm's accounting (sacct), for a job slurmctld no longer holds."""
    if shutil.which("sacct") is None:
        raise unknown(job_id)
    done = run("sacct", "--noheader", "--allocations", "--parsable2", "--jobs", job_id, "--format", "State,ExitCode")
    rows = [line.split("|") for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not rows:  # accounting off, or no such job
        raise unknown(job_id)
    state, exit_code = rows[0][0].split()[0], rows[0][-1]  # "CANCELLED by 1000" -> CANCELLED
    return state, f"exit code {exit_code}"


def output_path(job_id: str) -> Path:
    """Where the job writes its output (the script's --output, as Slurm expanded it)."""
    info = record(job_id)
    if not info:
        raise SlurmError(f"unknown Slurm job {job_id}: slurmctld no longer holds it, so its output file is not known "
                         "here; it is LOG_DIR/JOB_NAME-JOBID.out (areal submit --slurm --log-dir, runs/slurm-logs)")
    return Path(info.get("StdOut", ""))


def logs(job_id: str, follow: bool = False, out=None, poll_s: float = 2.0) -> str:
    """The job's output so far ("" while it is pending); ``follow`` streams it to ``out`` until the job ends."""
    path = output_path(job_id)
    if not follow:
        return path.read_text(errors="replace") if path.is_file() else ""
    out = out or sys.stdout
    offset = 0
    while True:
        ended = status(job_id)[0] in FINAL  # before the last read, so nothing written before the end is missed
        if path.is_file():
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            out.write(chunk.decode(errors="replace"))
            out.flush()
        if ended:
            return ""
        time.sleep(poll_s)


def stop(job_id: str) -> bool:
    """scancel the job (Slurm signals every process of it, Ray's included); False if it had already ended."""
    if status(job_id)[0] in FINAL:
        return False
    done = run("scancel", job_id)
    if done.returncode != 0:
        if UNKNOWN in done.stderr:
            raise unknown(job_id)
        raise SlurmError(f"scancel {job_id} failed ({first_line(done.stderr)}): it may be another user's job")
    return True


def wait(job_id: str, timeout_s: float = 86400, poll_s: float = 5.0) -> str:
    """Block until the job ends (or ``timeout_s``); returns its last state."""
    deadline = time.monotonic() + timeout_s
    while True:
        state, _ = status(job_id)
        if state in FINAL or time.monotonic() > deadline:
            return state
        time.sleep(poll_s)
