"""Resuming a checkpoint with other inputs fails, naming each difference, instead of training on them."""

import json

import pytest

from areal.config import TaskConfig, TrainConfig
from areal.fingerprint import fingerprint_mismatch, run_fingerprint
from launch.train import check_resume_fits
from learners.checkpoint import CheckpointError
from rollouts.tasks.arithmetic import ArithmeticTask


@pytest.fixture
def model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": 64}))
    return tmp_path


def fingerprint(model, **overrides):
    cfg = TrainConfig(**overrides)
    return run_fingerprint(cfg, ArithmeticTask(seed=cfg.task.seed).digest(), model)


def test_the_same_inputs_match(model):
    assert fingerprint_mismatch(fingerprint(model), fingerprint(model)) == []


def test_each_input_that_changed_is_named_with_both_values(model):
    saved = fingerprint(model)
    current = fingerprint(model, batch_size=16, seed=3, task=TaskConfig(seed=1))
    problems = fingerprint_mismatch(saved, current)
    assert "batch_size: checkpoint 8, this run 16" in problems
    assert "seed: checkpoint 0, this run 3" in problems
    assert "task.seed: checkpoint 0, this run 1" in problems
    assert any(p.startswith("the training prompts (dataset digest)") for p in problems)


def test_another_model_architecture_is_named(model, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    (other / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": 128}))
    problems = fingerprint_mismatch(fingerprint(model), fingerprint(other))
    assert len(problems) == 1 and problems[0].startswith("the model (architecture digest)")


def test_resuming_with_a_different_batch_size_is_refused_before_the_run_starts(model, tmp_path):
    saved = TrainConfig()
    manifest = {"fingerprint": run_fingerprint(saved, ArithmeticTask(seed=0).digest(), model)}
    resume = (tmp_path / "step-00000010", manifest)
    check_resume_fits(resume, saved, ArithmeticTask(seed=0).digest(), str(model))  # same inputs: fine
    with pytest.raises(CheckpointError, match="batch_size: checkpoint 8, this run 4") as err:
        check_resume_fits(resume, TrainConfig(batch_size=4), ArithmeticTask(seed=0).digest(), str(model))
    assert "step-00000010" in str(err.value) and "another out_dir" in str(err.value)


def test_with_a_kl_the_starting_model_is_named_so_a_resume_keeps_its_reference(tmp_path):
    from areal.fingerprint import fingerprint_mismatch, run_fingerprint
    from launch.config_loader import load_config

    cfg, _ = load_config(["algo.kl_coef=0.1"])
    saved = run_fingerprint(cfg, "d", tmp_path / "start")
    assert saved["algo.kl_reference"] == str((tmp_path / "start").resolve())
    differences = fingerprint_mismatch(saved, run_fingerprint(cfg, "d", tmp_path / "other"))
    assert any("algo.kl_reference" in d for d in differences)
    plain, _ = load_config([])
    assert "algo.kl_reference" not in run_fingerprint(plain, "d", tmp_path / "start")
