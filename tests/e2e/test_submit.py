"""`areal submit` / `status` / `logs` against a real Ray head started with `ray start --head` on 127.0.0.1."""

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
def ray_head():
    """A separate single-node Ray cluster (its own ports and temp dir, so the test session's Ray is untouched)."""
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
    temp_dir = f"/tmp/areal-head-{uuid.uuid4().hex[:6]}"
    ray = str(Path(sys.executable).with_name("ray"))
    args = [ray, "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--num-cpus=3",
            "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp_dir}",
            *(f"{flag}={port}" for flag, port in ports.items())]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run(args, check=True, env=env, capture_output=True, timeout=120)
    yield f"http://127.0.0.1:{ports['--dashboard-port']}"
    # stop only this cluster: every process started under its temp dir (`ray stop` would stop all of them)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        out = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True).stdout.split()
        for pid in map(int, out):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(5)
    shutil.rmtree(temp_dir, ignore_errors=True)


def run_cli(capsys, *argv) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_a_submitted_run_is_followed_to_the_end(ray_head, tmp_path, capsys, monkeypatch):
    from tests.tiny_pipelines import class_conditional_pipeline

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
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
    assert run_cli(capsys, "stop", job_id, "--address", ray_head).endswith("already ended\n")
