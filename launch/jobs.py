"""Runs on an existing Ray cluster through the Ray Jobs API: submit, status, logs, stop.

The job's driver is `areal train` itself, started by Ray on the head node with this
project as its working directory (uploaded by Ray, without the virtualenv, runs and git
data); it joins the cluster (`cluster.address=auto`) instead of starting Ray. A cluster with Ray token
authentication gets the token from --token-file or where Ray itself looks (see `token`); a missing or
refused token ends the command with one line saying which and how to pass it.
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
    """The cluster's dashboard address: ``given``, else $RAY_ADDRESS when it is an http one, else loopback.

    ``given`` may leave out the scheme (HEAD:8265 is http://HEAD:8265): without one, Ray's client would take it for
    the cluster's GCS address and wait a minute for a Ray that is not there."""
    if given:
        url = given.strip().rstrip("/")
        if "://" not in url:
            return f"http://{url}"
        if not url.startswith(("http://", "https://")):  # Ray's client would take the scheme for a plugin's name
            raise ValueError(f"--address {given}: the Ray Jobs API is the dashboard's http address, e.g. "
                             "http://HEAD:8265 or HEAD:8265")
        return url
    env = os.environ.get("RAY_ADDRESS", "")
    return env if env.startswith("http") else DEFAULT_ADDRESS


def token(token_file: str = "") -> tuple[str, str]:
    """(token, where it came from) for a cluster with Ray token authentication; ("", "") when none is set.

    ``token_file`` first, then Ray's own order: $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH names,
    ~/.ray/auth_token; RAY_AUTH_MODE=disabled turns the last three off.
    """
    if token_file:
        return read_token(token_file, "--token-file"), token_file
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return "", ""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "$RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return read_token(os.environ["RAY_AUTH_TOKEN_PATH"], "RAY_AUTH_TOKEN_PATH"), os.environ["RAY_AUTH_TOKEN_PATH"]
    default = Path.home() / ".ray" / "auth_token"
    return (default.read_text().strip(), str(default)) if default.is_file() else ("", "")


def read_token(path: str, key: str) -> str:
    """The token in ``path`` (``key`` names where the path came from in the error)."""
    try:
        value = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise ValueError(f"{key}: cannot read the Ray token file {path} ({exc.strerror})") from None
    if not value:
        raise ValueError(f"{key}: the Ray token file {path} is empty")
    return value


def no_dashboard(url: str, detail: str) -> ConnectionError:
    """The error for an unreachable dashboard, naming the fix."""
    return ConnectionError(f"no Ray dashboard at {url} ({detail}); start the cluster (`ray start --head`) "
                           "or pass --address http://HEAD:8265 (or set RAY_ADDRESS)")


def check_auth(url: str, headers: dict, source: str) -> None:
    """Ask the dashboard's version endpoint (token-protected) first, so a missing or wrong token is one clear line."""
    import requests

    try:
        status = requests.get(f"{url}/api/version", headers=headers, timeout=30).status_code
    except requests.exceptions.RequestException as exc:
        raise no_dashboard(url, type(exc).__name__) from None
    if status == 401:
        raise PermissionError(f"the Ray cluster at {url} uses token authentication and no token was given: pass "
                              "--token-file FILE (or set RAY_AUTH_TOKEN_PATH=FILE) with the cluster's token")
    if status == 403:
        raise PermissionError(f"the Ray cluster at {url} rejected the token from {source}: pass the cluster's own "
                              "token with --token-file FILE (or RAY_AUTH_TOKEN_PATH=FILE)")


def client(given: str = "", token_file: str = ""):
    """A Jobs API client for the cluster, sending its token when there is one (see `token`)."""
    url = address(given)
    value, source = token(token_file)
    # an explicit header: Ray adds its own only when RAY_AUTH_MODE=token is set in this process
    headers = {"Authorization": f"Bearer {value}"} if value else {}
    if url.startswith("http"):
        check_auth(url, headers, source)
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(url, headers=headers)
    except ConnectionError as exc:
        raise no_dashboard(url, str(exc)) from None


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
           num_cpus: float = 0, token_file: str = "") -> tuple[str, str]:
    """Submit `areal train OVERRIDES`; returns (job id, dashboard link)."""
    job_id = f"areal-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    client(given_address, token_file).submit_job(
        entrypoint=entrypoint(overrides, python), submission_id=job_id, runtime_env=runtime_env(env_vars, pip),
        metadata={"areal_overrides": " ".join(overrides)}, entrypoint_num_cpus=num_cpus or None)
    return job_id, f"{address(given_address)}/#/jobs/{job_id}"


def status(job_id: str, given_address: str = "", token_file: str = "") -> tuple[str, str]:
    """(status, message) of a submitted job."""
    info = client(given_address, token_file).get_job_info(job_id)
    return str(info.status.value if hasattr(info.status, "value") else info.status), info.message or ""


def logs(job_id: str, given_address: str = "", follow: bool = False, out=None, token_file: str = "") -> str:
    """The job's driver output so far; ``follow`` streams it to ``out`` until the job ends."""
    c = client(given_address, token_file)
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


def stop(job_id: str, given_address: str = "", token_file: str = "") -> bool:
    """Ask Ray to stop the job (its actors go with it); False if it had already ended."""
    return bool(client(given_address, token_file).stop_job(job_id))


def wait(job_id: str, given_address: str = "", timeout_s: float = 3600, poll_s: float = 2.0,
         token_file: str = "") -> str:
    """Block until the job ends (or ``timeout_s``); returns its final status."""
    deadline = time.monotonic() + timeout_s
    while True:
        state, _ = status(job_id, given_address, token_file)
        if state in FINAL or time.monotonic() > deadline:
            return state
        time.sleep(poll_s)
