"""Losing a node, not just a process: a real run (vLLM rollouts, DeepSpeed learner) on a multi-node Ray
cluster built on this machine with Ray's own test cluster (``ray.cluster_utils.Cluster``: a raylet and an
object store per node).

Rollout actors and the learner group are pinned to their node pools with ``rollout.resources`` and
``learner.resources``, so weights cross object stores every step. Mid-run the rollout node is removed (its
raylet SIGKILLed, as a crashed machine); once the learner has trained what was buffered and waits, the
learner's node too, so the last weights it exported are in no object store any more. The autoscaler's part
(a fresh node of each pool) is played by ``cluster.add_node``. The replacement rollout actor cannot load
the lost weights: that must restore the learner group (from its last checkpoint, on the new node), not
blame the rollout actor. The run must finish and account for every prompt.

The cluster needs its own Ray, so the run is a subprocess (this file run as a script) with a private
RAY_TMPDIR: it never sees the test session's Ray, nor another run's ``ray_current_cluster``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
STEPS, BATCH = 8, 4  # more than the buffered rollouts can train once the rollout node is gone
KILL_AT = 2  # the rollout node is removed once the checkpoint of this step exists (checkpoint.every)
IDLE_S = 10.0  # no new train step for this long after the rollout node's loss: nothing left to train
OBJECT_STORE = 100 * 1024**2  # per node; a weight payload of the tiny model is ~13 MB


def test_a_run_survives_losing_a_rollout_node_and_the_learner_node(tmp_path):
    from tests.integration.test_fault_tolerance import assert_every_prompt_counted, session_processes

    ray_tmp = tempfile.mkdtemp(prefix="areal-mn-", dir="/tmp")  # short: Ray's socket paths live under it
    out, log_path = tmp_path / "run", tmp_path / "run.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    with open(log_path, "w") as sink:
        proc = subprocess.Popen([sys.executable, __file__, str(out)], cwd=ROOT, env=env, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=480)
        except subprocess.TimeoutExpired:
            pass
        finally:  # whatever the run left: every process of its session (vLLM's engine cores have their own group)
            for pid in session_processes(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(30)
            shutil.rmtree(ray_tmp, ignore_errors=True)
    log = log_path.read_text()
    report_path = out / "report.json"
    assert proc.returncode == 0 and report_path.exists(), \
        f"multi-node run failed (rc {proc.returncode}):\n{log[-6000:]}"
    report = json.loads(report_path.read_text())
    summary = report["summary"]

    # each pool's actors ran on its own nodes (so weights crossed object stores), the replacements on the
    # nodes that joined: actor name (without the run's tag) -> node
    placed = {name.split("-", 2)[2]: report["nodes"][node] for name, node in report["placement"].items()}
    assert placed == {"rollout-0": "rollout-a", "rollout-1": "rollout-b",
                      "g0-learner-0": "learner-a", "g1-learner-0": "learner-b"}
    # the rollout node: its actor failed and the replacement serves the final weights
    assert [f["worker"] for f in summary["rollout_failures"]] == [0]
    assert summary["rollout_workers"] == 1 and summary["rollout_engine_versions"] == [STEPS]
    # the learner node: an idle learner's loss shows first as its exported weights being gone; the replacement
    # rollout actor was not blamed for it (nor replaced again): the learner group was restored from the last
    # checkpoint on the new node, and the run finished
    saved = report["checkpoints_at_removal"][-1]
    (failed,) = [m for m in report["log"] if m.startswith("learner group failed")]
    assert "are lost with the learners' node (RolloutActor 1 could not load them)" in failed
    assert f"restoring from {out}/checkpoints/step-{saved:08d}" in failed
    assert summary["learner_restarts"] == 1 and summary["steps"] == STEPS
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    versions = [r["staleness/version"] for r in rows if "learner/loss" in r]
    assert versions[-1] == STEPS and sorted(set(versions)) == list(range(1, STEPS + 1))
    assert_every_prompt_counted(summary, STEPS, BATCH)


# -- the run, in its own process --------------------------------------------------------------------

def _trained_steps(out: Path) -> int:
    path = out / "metrics.jsonl"
    return sum("learner/loss" in line for line in path.read_text().splitlines()) if path.exists() else 0


def _checkpoints(out: Path) -> list[int]:
    return sorted(int(p.name[5:]) for p in (out / "checkpoints").glob("step-*") if (p / "manifest.json").exists())


def _placement(tag: str) -> dict[str, str]:
    """Node id of every actor this run ever started (dead ones keep the node they ran on), by name."""
    import ray

    return {info["Name"]: info["Address"]["NodeID"] for info in ray._private.state.actors().values()
            if info["Name"].startswith(f"{tag}-")}


def _wait(condition, timeout: float, what: str, thread: threading.Thread, result: dict) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if not thread.is_alive():
            raise RuntimeError(f"the run ended while waiting for {what}") from result.get("error")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def run(out: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from launch.config_loader import load_config
    from launch.train import train

    started = time.monotonic()
    report: dict = {"events": []}

    def event(what: str) -> None:
        report["events"].append((round(time.monotonic() - started, 1), what))
        print(f"[multinode] {report['events'][-1]}", flush=True)

    class Record(logging.Handler):  # the driver's warnings and errors, whatever the console shows of them
        def emit(self, record: logging.LogRecord) -> None:
            if record.name.startswith("actors.") and record.levelno >= logging.WARNING:
                report["log"].append(record.getMessage())

    report["log"] = []
    logging.getLogger().addHandler(Record())
    fast_failure_detection = {"health_check_period_ms": 500, "health_check_timeout_ms": 1000,
                              "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "object_store_memory": OBJECT_STORE,
        "_system_config": fast_failure_detection})  # the driver's node; nothing is scheduled on it
    nodes = {"head": cluster.head_node}

    def add(*names: str) -> None:  # nodes of the pools named, started side by side
        for name in names:
            pool = name.split("-")[0]
            nodes[name] = cluster.add_node(wait=False, num_cpus=1, resources={f"{pool}_pool": 1},
                                           object_store_memory=OBJECT_STORE)

    add("rollout-a", "learner-a")
    cluster.wait_for_nodes()
    event("cluster up")
    ray.init(address=cluster.address, log_to_driver=False)
    cfg, resolved = load_config([
        "experiment=ci_tiny", f"out_dir={out}", f"total_steps={STEPS}", f"batch_size={BATCH}", "rollout.workers=1",
        "+rollout.resources.rollout_pool=1", "+learner.resources.learner_pool=1", f"checkpoint.every={KILL_AT}",
        "eval_every=0", "task.eval_size=8", "rollout.generate_timeout_s=120", "rollout.weight_sync_timeout_s=120",
        "rollout.start_timeout_s=240", "learner.step_timeout_s=180", "learner.start_timeout_s=240",
        "logging.tensorboard=false", "logging.wandb_mode=disabled"])
    result: dict = {}

    def target():
        try:
            result["summary"] = train(cfg, resolved)
        except BaseException as exc:  # noqa: BLE001 - reported below, not lost in the thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    _wait(lambda: KILL_AT in _checkpoints(out), 300, f"checkpoint {KILL_AT}", thread, result)
    tag = "-".join(next(n for n in ray.util.list_named_actors() if "-learner-" in n).split("-")[:2])
    event(f"step {_trained_steps(out)}, checkpoints {_checkpoints(out)}: removing rollout-a")
    cluster.remove_node(nodes["rollout-a"], allow_graceful=False)  # its raylet SIGKILLed: a crashed machine
    add("learner-b")  # the autoscaler's spare for the learner pool, up before learner-a goes
    # no rollouts come any more: the learner trains what is buffered, then waits
    last = {"steps": -1, "since": 0.0}

    def idle() -> bool:
        steps = _trained_steps(out)
        if steps != last["steps"]:
            last.update(steps=steps, since=time.monotonic())
        return time.monotonic() - last["since"] > IDLE_S

    _wait(idle, 120, "the learner to run out of rollouts", thread, result)
    report["checkpoints_at_removal"] = _checkpoints(out)
    event(f"step {_trained_steps(out)}, checkpoints {_checkpoints(out)}: removing learner-a (idle)")
    cluster.remove_node(nodes["learner-a"], allow_graceful=False)
    add("rollout-b")  # the autoscaler's replacement: the rollout actor waiting for a node starts there
    event("rollout-b started")

    thread.join(360)
    if thread.is_alive():
        raise TimeoutError("the run did not finish within 360 s of the removals")
    if "error" in result:
        raise result["error"]
    event("run finished")
    report["summary"] = result["summary"]
    report["placement"] = _placement(tag)
    report["nodes"] = {node.node_id: name for name, node in nodes.items()}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    ray.shutdown()
    for node in list(cluster.worker_nodes):
        cluster.remove_node(node, allow_graceful=False)
    cluster.shutdown()
    event("cluster down")


if __name__ == "__main__":
    run(Path(sys.argv[1]))
