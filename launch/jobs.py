"""Runs on an existing Ray cluster through the Ray Jobs API: submit, status, logs, stop.

The job's driver is `areal train` itself, started by Ray on the head node with this
project as its working directory (uploaded by Ray, without the virtualenv, runs and git
data); it joins the cluster (`cluster.address=auto`) instead of starting Ray.
"""

from __future__ import annotations

import os
import shlex
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# never shipped with the job: the environment, outputs and caches stay on this machine
EXCLUDES = [".venv", "runs", ".git", "*.egg-info", "__pycache__", ".pytest_cache", "bench/results", "*.png"]
FINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def address(given: str = "") -> str:
    """The cluster's dashboard address: ``given``, else $RAY_ADDRESS when it is an http one, else loopback."""
    env = os.environ.get("RAY_ADDRESS", "")
    return given or (env if env.startswith("http") else DEFAULT_ADDRESS)


def client(given: str = ""):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address(given))
    except ConnectionError as exc:
        raise ConnectionError(f"no Ray dashboard at {address(given)} ({exc}); start the cluster (`ray start --head`) "
                              "or pass --address http://HEAD:8265 (or set RAY_ADDRESS)") from None
    except Exception as exc:  # noqa: BLE001 - Ray's token auth error types vary by version; add the fix to any
        if "auth" in str(exc).lower():
            raise RuntimeError(f"{exc}\nThe cluster uses token authentication: run with RAY_AUTH_MODE=token and the "
                               "cluster's token in ~/.ray/auth_token (or RAY_AUTH_TOKEN)") from None
        raise


def entrypoint(overrides: list[str], python: str = "python") -> str:
    """The job's command: `areal train` with the overrides, joining the cluster it runs on."""
    args = [*overrides] + ([] if any(o.startswith("cluster.address=") for o in overrides) else ["cluster.address=auto"])
    return " ".join([shlex.quote(python), "-m", "launch.cli", "train", *map(shlex.quote, args)])


def runtime_env(env_vars: dict[str, str] | None = None, pip: list[str] | None = None) -> dict:
    env = {"working_dir": str(ROOT), "excludes": EXCLUDES, "env_vars": {"HF_HUB_OFFLINE": "1", **(env_vars or {})}}
    if pip:
        env["pip"] = pip
    return env


def submit(overrides: list[str], given_address: str = "", python: str = "python", env_vars=None, pip=None,
           num_cpus: float = 0) -> tuple[str, str]:
    """Submit `areal train OVERRIDES`; returns (job id, dashboard link)."""
    job_id = f"areal-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    client(given_address).submit_job(
        entrypoint=entrypoint(overrides, python), submission_id=job_id, runtime_env=runtime_env(env_vars, pip),
        metadata={"areal_overrides": " ".join(overrides)}, entrypoint_num_cpus=num_cpus or None)
    return job_id, f"{address(given_address)}/#/jobs/{job_id}"


def status(job_id: str, given_address: str = "") -> tuple[str, str]:
    """(status, message) of a submitted job."""
    info = client(given_address).get_job_info(job_id)
    return str(info.status.value if hasattr(info.status, "value") else info.status), info.message or ""


def logs(job_id: str, given_address: str = "", follow: bool = False, out=None) -> str:
    """The job's driver output so far; ``follow`` streams it to ``out`` until the job ends."""
    c = client(given_address)
    if not follow:
        return c.get_job_logs(job_id)
    import asyncio
    import sys

    out = out or sys.stdout

    async def tail():
        async for chunk in c.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    return ""


def stop(job_id: str, given_address: str = "") -> bool:
    """Ask Ray to stop the job (its actors go with it); False if it had already ended."""
    return bool(client(given_address).stop_job(job_id))


def wait(job_id: str, given_address: str = "", timeout_s: float = 3600, poll_s: float = 2.0) -> str:
    """Block until the job ends (or ``timeout_s``); returns its final status."""
    deadline = time.monotonic() + timeout_s
    while True:
        state, _ = status(job_id, given_address)
        if state in FINAL or time.monotonic() > deadline:
            return state
        time.sleep(poll_s)
