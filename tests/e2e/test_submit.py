"""`areal submit` / `status` / `logs` against a real Ray head started with `ray start --head` on 127.0.0.1, with
token authentication on as `areal slurm` starts it (RAY_AUTH_MODE=token, the token in a 0600 file)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from launch.cli import main

pytestmark = pytest.mark.slow
PORT_FLAGS = ("--port", "--dashboard-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
              "--ray-client-server-port", "--runtime-env-agent-port", "--metrics-export-port", "--node-manager-port",
              "--object-manager-port")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A separate single-node Ray cluster (its own ports and temp dir, so the test session's Ray is untouched);
    yields (dashboard address, token file)."""
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
    temp_dir = f"/tmp/areal-head-{uuid.uuid4().hex[:6]}"
    token_file = tmp_path_factory.mktemp("auth") / "ray.token"
    token_file.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    token_file.chmod(0o600)
    ray = str(Path(sys.executable).with_name("ray"))
    args = [ray, "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--num-cpus=3",
            "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp_dir}",
            *(f"{flag}={port}" for flag, port in ports.items())]
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    for var in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
        env.pop(var, None)
    subprocess.run(args, check=True, env=env, capture_output=True, timeout=120)
    yield f"http://127.0.0.1:{ports['--dashboard-port']}", str(token_file)
    # stop only this cluster: every process started under its temp dir (`ray stop` would stop all of them);
    # up to 5 s for each signal, polled: most of them are gone within a second of SIGTERM
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in cluster_processes(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while cluster_processes(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
    shutil.rmtree(temp_dir, ignore_errors=True)


def cluster_processes(temp_dir: str) -> list[int]:
    """Pids of the processes whose command line names ``temp_dir`` (this test's Ray head and its workers)."""
    out = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in out]


def run_cli(capsys, *argv) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_without_the_token_the_cluster_refuses_in_one_line(ray_head, tmp_path, capsys, monkeypatch):
    address, _ = ray_head
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # nothing from the environment or ~/.ray/auth_token
    assert main(["status", "areal-none", "--address", address]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no token was given" in err and "--token-file" in err
    wrong = tmp_path / "wrong.token"
    wrong.write_text("0" * 64)
    assert main(["status", "areal-none", "--address", address, "--token-file", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"rejected the token from {wrong}" in err


def test_a_submitted_run_is_followed_to_the_end(ray_head, tmp_path, capsys, monkeypatch):
    from tests.tiny_pipelines import class_conditional_pipeline

    ray_head, token_file = ray_head
    # the token comes from RAY_AUTH_TOKEN_PATH here, as on a Slurm node; the job's driver gets it from the head
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", token_file)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    pipe = class_conditional_pipeline(tmp_path / "pipe", labels=("circle", "square"))
    out_dir = tmp_path / "run"
    printed = run_cli(capsys, "submit", "--address", ray_head, "--python", sys.executable, "experiment=ddpo_tiny",
                      f"model_path={pipe}", f"out_dir={out_dir}", "total_steps=2", "batch_size=2", "eval_every=0",
                      "rollout.samples_per_prompt=4", "diffusion.num_steps=3", "task.eval_size=2",
                      "logging.progress=false", "logging.wandb_mode=disabled")
    job_id = printed.split()[1]
    assert job_id.startswith("areal-") and f"{ray_head}/#/jobs/{job_id}" in printed

    states = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        state = run_cli(capsys, "status", job_id, "--address", ray_head).split()[1]
        states.append(state)
        if state in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(2)
    logs = run_cli(capsys, "logs", job_id, "--address", ray_head)
    assert states[-1] == "SUCCEEDED", logs[-3000:]
    assert "held-out reward" in logs and "after 2 steps" in logs
    assert json.loads((out_dir / "summary.json").read_text())["steps"] == 2
    assert run_cli(capsys, "stop", job_id, "--address", ray_head, "--token-file", token_file).endswith(
        "already ended\n")
