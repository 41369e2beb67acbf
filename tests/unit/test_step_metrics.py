"""A step's metrics say where its time went: means of what the driver timed in the window."""

import json

import pytest

from actors.step_metrics import StepMetrics


def test_a_step_row_carries_the_means_of_its_timings_and_only_of_what_was_timed(tmp_path):
    metrics = StepMetrics(tmp_path / "timeline.jsonl")
    metrics.record("rollout/latency", 1.0, 3.0)
    metrics.record("rollout/engine_seconds", 0.8, 2.4)
    metrics.record("rollout/reward_seconds", 0.1, 0.1)
    metrics.record("rollout/queue_seconds", 0.1, 0.5)
    metrics.record("learner/gap_seconds", 0.25)
    metrics.record("weights/export_seconds", 0.02)
    row = metrics.step({"learner/step_seconds": 0.4}, {"rollout-0": []})
    assert row["rollout/latency_mean"] == 2.0 and row["rollout/engine_seconds_mean"] == pytest.approx(1.6)
    assert row["rollout/queue_seconds_mean"] == pytest.approx(0.3) and row["learner/gap_seconds_mean"] == 0.25
    assert row["weights/export_seconds_mean"] == 0.02 and row["learner/step_seconds"] == 0.4
    assert "driver/batch_seconds_mean" not in row  # nothing was batched in this window
    nothing = metrics.step({}, {})  # the window starts afresh
    assert not any(key.endswith("_seconds_mean") or key == "rollout/latency_mean" for key in nothing)
    metrics.close()
    assert json.loads((tmp_path / "timeline.jsonl").read_text().splitlines()[-1])["actor"] == "window"
