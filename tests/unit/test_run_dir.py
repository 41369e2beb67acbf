"""A run directory belongs to one run: a new run never mixes its files with an earlier run's."""

import pytest

from areal.config import CheckpointConfig, TrainConfig
from launch.run_dir import RunDirError, prepare_run_dir


def earlier_run(path):
    (path / "checkpoints" / "step-00000040").mkdir(parents=True)
    (path / ".areal-run").touch()
    (path / "config.yaml").write_text("seed: 0\n")
    (path / "metrics.jsonl").write_text('{"step": 40}\n')
    return path


def config(out_dir, **kwargs) -> TrainConfig:
    checkpoint = CheckpointConfig(**{k: kwargs.pop(k) for k in ("resume", "resume_from") if k in kwargs})
    return TrainConfig(out_dir=str(out_dir), checkpoint=checkpoint, **kwargs)


def test_a_new_run_takes_a_new_or_empty_directory(tmp_path):
    assert prepare_run_dir(config(tmp_path / "a" / "b"), resumable=False).is_dir()
    (tmp_path / "empty").mkdir()
    assert prepare_run_dir(config(tmp_path / "empty"), resumable=False) == tmp_path / "empty"


def test_a_new_run_refuses_a_directory_that_holds_a_run_in_one_line_naming_both_ways_out(tmp_path):
    run = earlier_run(tmp_path / "run")
    with pytest.raises(RunDirError) as err:
        prepare_run_dir(config(run), resumable=False)
    message = str(err.value)
    assert "\n" not in message and str(run) in message
    assert "checkpoint.resume=true" in message and "overwrite=true" in message
    assert (run / "metrics.jsonl").read_text() == '{"step": 40}\n'  # nothing touched


def test_resuming_continues_the_run_in_place(tmp_path):
    run = earlier_run(tmp_path / "run")
    assert prepare_run_dir(config(run, resume=True), resumable=True) == run
    assert prepare_run_dir(config(run, resume_from=str(run / "checkpoints" / "step-00000040")), resumable=True)
    assert (run / "metrics.jsonl").exists()


def test_resume_without_a_checkpoint_does_not_start_over_on_top_of_the_old_files(tmp_path):
    run = earlier_run(tmp_path / "run")
    with pytest.raises(RunDirError, match="no complete checkpoint"):
        prepare_run_dir(config(run, resume=True), resumable=False)


def test_resuming_another_run_into_a_used_directory_is_refused(tmp_path):
    source, target = earlier_run(tmp_path / "source"), earlier_run(tmp_path / "target")
    with pytest.raises(RunDirError):
        prepare_run_dir(config(target, resume_from=str(source)), resumable=True)


def test_overwrite_replaces_an_earlier_run(tmp_path):
    run = earlier_run(tmp_path / "run")
    assert prepare_run_dir(config(run, overwrite=True), resumable=False) == run
    assert [p.name for p in run.iterdir()] == [".areal-run"]


def test_overwrite_never_deletes_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a run directory"):
        prepare_run_dir(config(tmp_path, overwrite=True), resumable=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_overwrite_of_a_project_with_a_config_yaml_of_its_own_deletes_nothing(tmp_path):
    """out_dir=. in a project root that happens to hold a config.yaml (the old mark of a run) is refused."""
    (tmp_path / "config.yaml").write_text("my: project\n")
    (tmp_path / "src").mkdir()
    with pytest.raises(RunDirError, match=r"holds no \.areal-run"):
        prepare_run_dir(config(tmp_path, overwrite=True), resumable=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "src"]


def test_every_run_directory_is_marked_and_overwrite_keeps_the_mark(tmp_path):
    out = prepare_run_dir(config(tmp_path / "new"), resumable=False)
    assert (out / ".areal-run").exists()
    (out / "metrics.jsonl").write_text("{}\n")
    prepare_run_dir(config(out, overwrite=True), resumable=False)
    assert sorted(p.name for p in out.iterdir()) == [".areal-run"]


def test_areal_train_into_a_used_directory_fails_before_starting_anything(tmp_path, capsys):
    from launch.cli import main

    run = earlier_run(tmp_path / "run")
    assert main(["train", "experiment=arith_tiny", f"out_dir={run}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("areal train: config error: out_dir=") and "overwrite=true" in err
    assert sorted(p.name for p in run.iterdir()) == [".areal-run", "checkpoints", "config.yaml", "metrics.jsonl"]
