"""Metric sinks: the JSONL record, and wandb runs that continue when the training run is resumed."""

import json

from launch.config_loader import load_config
from launch.sinks import JsonlSink, WandbSink


def test_the_jsonl_record_keeps_non_finite_values_as_null(tmp_path):
    sink = JsonlSink(tmp_path)
    sink.log(3, {"a": 1.5, "b": float("nan")})
    sink.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 3, "a": 1.5, "b": None}


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
