"""Real failures during a real run (vLLM rollouts, DeepSpeed learner, Ray): every prompt is counted.

* rollout actors SIGKILLed at random moments are replaced; their rollouts are requeued exactly once;
* a driver stopped with SIGTERM mid-run (with its embedded Ray) leaves no process running, names the
  checkpoint to resume from, and resumed in deterministic mode ends with the same weights, byte for byte,
  as a run that was never interrupted;
* a learner lost mid-run is restored from the last checkpoint: tests/e2e/test_multinode.py removes its node.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def start_training(overrides: list[str]) -> tuple[threading.Thread, dict]:
    """train() in a thread of this process (on the session's Ray); the summary lands in the dict."""
    from launch.config_loader import load_config
    from launch.train import train

    cfg, resolved = load_config(overrides)
    result: dict = {}

    def target():
        try:
            result["summary"] = train(cfg, resolved)
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def trained_steps(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum("learner/loss" in line for line in path.read_text().splitlines())


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def actor_pid(role: str, exclude: tuple[str, ...] = ()) -> tuple[str, int]:
    """(name, pid) of a live actor of the running job whose name contains ``-role-`` (not in ``exclude``)."""
    import ray

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        names = sorted(n for n in ray.util.list_named_actors() if f"-{role}-" in n and n not in exclude)
        if names:
            name = names[-1] if role == "learner" else random.choice(names)
            try:
                return name, ray.get(ray.get_actor(name).pid.remote(), timeout=60)
            except (ValueError, ray.exceptions.RayError):
                pass  # it died or left between the listing and the call: pick again
        time.sleep(0.1)
    raise AssertionError(f"no live {role} actor to kill")


def finished(thread: threading.Thread, result: dict, timeout: float) -> dict:
    thread.join(timeout)
    assert not thread.is_alive(), "the run did not finish"
    if "error" in result:
        raise result["error"]
    return result["summary"]


def assert_every_prompt_counted(summary: dict, steps: int, batch: int) -> None:
    ledger = summary["ledger"]
    assert ledger["unaccounted"] == 0
    assert ledger["trained"] == steps * batch
    assert ledger["drawn"] == (ledger["trained"] + ledger.get("filtered", 0) + ledger["buffered"]
                               + ledger["in_flight"] + ledger["queued"])
    assert summary["duplicate_trained_tickets"] == 0


def test_killed_rollout_actors_are_replaced_and_their_prompts_requeued_once(ray_session, tmp_path):
    random.seed(7)
    steps, batch = 10, 4  # enough for both replacements to be asked for and one to serve the last steps
    # every version synced: the gate then keeps groups in flight on both workers (with engines a version
    # behind it can hold generation back until the next version lands, and the kills would find them idle)
    thread, result = start_training(["experiment=ci_tiny", f"out_dir={tmp_path}", f"total_steps={steps}",
                                     "rollout.workers=2", "eval_every=0", "rollout.sync_every=1",
                                     "logging.tensorboard=false", "logging.wandb_mode=disabled"])
    wait_for(lambda: trained_steps(tmp_path) >= 1 or not thread.is_alive(), 600, "the first train step")
    killed = []
    for _ in range(2):  # the second kill lands before the first replacement serves: no worker left for a while
        time.sleep(random.uniform(0.0, 0.5))
        name, pid = actor_pid("rollout", exclude=tuple(killed))
        os.kill(pid, signal.SIGKILL)
        killed.append(name)
    summary = finished(thread, result, 900)
    failures = summary["rollout_failures"]
    assert len(failures) == len(killed) == 2
    # every dead worker was replaced (a replacement may still be starting when the run ends)
    assert summary["rollout_workers"] + summary["rollout_workers_starting"] == 2
    # each rollout the dead workers held went back to the queue exactly once
    assert summary["outcomes"].get("failed", 0) == sum(len(f["tickets"]) for f in failures)
    assert_every_prompt_counted(summary, steps, batch)
    assert set(summary["rollout_engine_versions"]) == {steps}


STEPS = 8
DETERMINISTIC = ["experiment=ci_tiny", "controller.deterministic=true", "checkpoint.every=1", "eval_every=0",
                 f"total_steps={STEPS}", "logging.tensorboard=false", "logging.wandb_mode=disabled"]


def final_weights_digest(out: Path) -> str:
    manifest = json.loads((out / "checkpoints" / f"step-{STEPS:08d}" / "manifest.json").read_text())
    return manifest["files"]["model/model.safetensors"]


def session_processes(sid: int) -> dict[int, str]:
    """{pid: command line} of live processes in session ``sid`` (what a run started, Ray's daemons included)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                found[int(stat.parent.name)] = command.decode()[:120]
        except (OSError, IndexError, ValueError):
            pass  # it exited while we looked
    return found


def test_a_driver_stopped_mid_run_leaves_nothing_running_and_resumes_to_the_same_weights(ray_session, tmp_path):
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    # the uninterrupted reference trains on the session's Ray meanwhile: a deterministic run's weights do not
    # depend on its timing, so sharing the machine with the other runs changes nothing it is compared on
    reference = start_training([*DETERMINISTIC, f"out_dir={uninterrupted}"])
    try:
        killed_at = stop_a_run_mid_way(interrupted)
        thread, result = start_training([*DETERMINISTIC, f"out_dir={interrupted}", "checkpoint.resume=true"])
        resumed = finished(thread, result, 900)
    finally:  # the reference run ends before the next test starts, whatever happened here
        reference[0].join(900)
    straight = finished(*reference, 0)

    assert resumed["steps"] == straight["steps"] == STEPS
    assert final_weights_digest(interrupted) == final_weights_digest(uninterrupted)
    rows = [json.loads(line) for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert [r["staleness/version"] for r in rows if "learner/loss" in r][-(STEPS - killed_at):] == \
        [float(v) for v in range(killed_at + 1, STEPS + 1)]


def stop_a_run_mid_way(interrupted: Path) -> int:
    """Start a deterministic run in its own process with its own embedded Ray, stop it with SIGTERM (as kill,
    scancel and Kubernetes do) once its third checkpoint is written, check that it stopped cleanly and named
    the checkpoint to resume from; returns the step of its newest checkpoint."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "launch.cli", "train", *DETERMINISTIC, f"out_dir={interrupted}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for(lambda: (interrupted / "checkpoints" / "step-00000003").exists() or proc.poll() is not None, 600,
                 "the third checkpoint of the run to be stopped")
        time.sleep(random.Random(5).uniform(0.0, 0.3))
        assert proc.poll() is None, "the run ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)  # to the driver only: it must stop what it started
        _, stderr = proc.communicate(timeout=120)
        deadline = time.monotonic() + 30
        while session_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert session_processes(proc.pid) == {}  # Ray's agents were orphaned here before
        assert proc.returncode == 130
        assert "stopped by SIGTERM" in stderr and "checkpoint.resume=true" in stderr
        assert str(interrupted / "checkpoints" / "step-0000000") in stderr
    finally:
        try:  # leave nothing behind if the test failed midway
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    killed_at = max(int(p.name[5:]) for p in (interrupted / "checkpoints").glob("step-*"))
    # steps after the kill train first on the saved buffer (up to max_staleness = 2 batches), then on
    # rollouts generated after the resume: both must match the uninterrupted run
    assert 3 <= killed_at <= STEPS - 3
    return killed_at


def test_a_learner_failure_beyond_the_restart_budget_stops_the_run_with_the_setting_named(ray_session, tmp_path):
    thread, result = start_training(["experiment=ci_tiny", f"out_dir={tmp_path}", "total_steps=40",
                                     "learner.max_restarts=0", "eval_every=0", "logging.tensorboard=false",
                                     "logging.wandb_mode=disabled"])
    wait_for(lambda: trained_steps(tmp_path) >= 2 or not thread.is_alive(), 600, "two train steps")
    _, pid = actor_pid("learner")
    os.kill(pid, signal.SIGKILL)
    thread.join(300)
    assert not thread.is_alive()
    message = str(result.get("error"))
    assert "learner.max_restarts=0" in message and "checkpoint.resume=true" in message
