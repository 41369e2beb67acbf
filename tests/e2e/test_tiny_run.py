"""End to end on the tiny model: vLLM rollouts, DeepSpeed learner, Ray actors, weight sync, metrics."""

import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, ray_session):
    from launch.config_loader import load_config
    from launch.train import train

    out = tmp_path_factory.mktemp("run")
    cfg, resolved = load_config(["experiment=ci_tiny", f"out_dir={out}"])
    summary = train(cfg, resolved)
    return cfg, out, summary


def test_training_happened_and_versions_advanced(finished_run):
    cfg, out, summary = finished_run
    assert summary["steps"] == cfg.total_steps
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "learner/loss" in r]
    assert [r["staleness/version"] for r in trained] == [1.0, 2.0, 3.0, 4.0]
    assert all(r["learner/tokens"] > 0 for r in trained)


def test_weights_reached_the_rollout_workers(finished_run):
    cfg, _, summary = finished_run
    assert summary["rollout_engine_versions"] == [cfg.total_steps] * cfg.rollout.workers
    assert summary["eval_outputs_changed"] > 0  # greedy generation differs after the updates


def test_the_engines_loaded_every_second_version(finished_run):
    cfg, out, _ = finished_run
    assert cfg.rollout.sync_every == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    synced = [r["staleness/version"] for r in rows if "weights/sync_seconds" in r]
    assert synced == [2.0, 4.0]


def test_no_trained_sample_exceeded_the_staleness_bound(finished_run):
    cfg, out, summary = finished_run
    assert summary["max_trained_staleness"] <= cfg.algo.max_staleness


def test_outputs_are_where_the_readme_says(finished_run):
    cfg, out, summary = finished_run
    assert (out / "checkpoints" / f"step-{cfg.total_steps:08d}" / "model" / "model.safetensors").exists()
    assert (out / "config.yaml").exists() and (out / "summary.json").exists()
    assert any((out / "tensorboard").iterdir())
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(f"{summary['checkpoint']}/model")


def test_a_resumed_run_continues_from_the_last_checkpoint(finished_run, tmp_path):
    import shutil

    from launch.config_loader import load_config
    from launch.train import train

    cfg, out, _ = finished_run
    shutil.copytree(out / "checkpoints", tmp_path / "checkpoints")
    more = cfg.total_steps + 2
    cfg2, resolved = load_config(["experiment=ci_tiny", f"out_dir={tmp_path}", f"total_steps={more}",
                                  "checkpoint.resume=true"])
    summary = train(cfg2, resolved)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["staleness/version"] for r in rows if "learner/loss" in r] == [cfg.total_steps + 1.0, float(more)]
    assert summary["rollout_engine_versions"] == [more]
    assert (tmp_path / "checkpoints" / f"step-{more:08d}" / "manifest.json").exists()
