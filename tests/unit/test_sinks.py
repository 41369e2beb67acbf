"""Metric sinks: the JSONL record, and wandb runs that continue when the training run is resumed."""

import json
import time

from launch.config_loader import load_config
from launch.sinks import JsonlSink, WandbSink, headline


class FakeClock:
    """Unix seconds that move only when told to."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def rows(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_the_jsonl_record_keeps_non_finite_values_as_null(tmp_path):
    sink = JsonlSink(tmp_path, clock=FakeClock(1000.0))
    sink.log(3, {"a": 1.5, "b": float("nan")})
    sink.close()
    assert rows(tmp_path) == [{"step": 3, "time": 1000.0, "elapsed_s": 0.0, "a": 1.5, "b": None}]


def test_every_row_carries_its_wall_clock_time_and_the_seconds_since_the_run_started(tmp_path):
    clock = FakeClock(1_700_000_000.0)
    sink = JsonlSink(tmp_path, clock=clock)  # opened as the run starts, before the actors are up
    clock.now += 42.5
    sink.log(0, {"eval/accuracy": 0.46})
    clock.now += 10.0
    sink.log(1, {"rollout/reward_mean": 0.3})
    sink.close()
    assert [(r["step"], r["time"], r["elapsed_s"]) for r in rows(tmp_path)] == \
        [(0, 1_700_000_042.5, 42.5), (1, 1_700_000_052.5, 52.5)]


def test_rows_are_stamped_with_the_real_clock_by_default(tmp_path):
    before = time.time()
    sink = JsonlSink(tmp_path)
    sink.log(1, {"x": 1.0})
    sink.close()
    (row,) = rows(tmp_path)
    assert before - 1e-3 <= row["time"] <= time.time() + 1e-3 and 0.0 <= row["elapsed_s"] < 60.0  # ms precision


def test_a_resumed_run_continues_its_clock_without_the_time_it_was_stopped(tmp_path):
    clock = FakeClock(1000.0)
    first = JsonlSink(tmp_path, clock=clock)
    clock.now += 30.0
    first.log(5, {"x": 1.0})
    first.close()
    clock.now += 3600.0  # killed, resumed an hour later
    resumed = JsonlSink(tmp_path, clock=clock)
    clock.now += 5.0
    resumed.log(6, {"x": 2.0})
    resumed.close()
    assert [r["elapsed_s"] for r in rows(tmp_path)] == [30.0, 35.0]


def test_a_resumed_run_continues_its_wandb_run(tmp_path):
    cfg, _ = load_config(["experiment=ci_tiny", f"out_dir={tmp_path}"])
    first = WandbSink(cfg, tmp_path)
    first.log(1, {"x": 1.0})
    run_id = first.run.id
    first.close()
    resumed_cfg, _ = load_config(["experiment=ci_tiny", f"out_dir={tmp_path}", "checkpoint.resume=true"])
    again = WandbSink(resumed_cfg, tmp_path)
    assert again.resumed and again.run.id == run_id
    again.close()
    fresh = WandbSink(cfg, tmp_path)  # the same out_dir without resuming starts a new wandb run
    assert not fresh.resumed and fresh.run.id != run_id
    fresh.close()


def test_the_progress_line_shows_the_headline_numbers_briefly():
    latest = {"eval/accuracy": 0.675, "rollout/reward_mean": 0.42, "staleness/mean": 2.5, "rollout/samples_per_s": 64.2,
              "rollout/tokens_per_s": 311.0, "learner/loss": 0.01}
    assert headline(latest) == "acc 0.675  reward 0.42  stale 2.5  samples/s 64.2"
