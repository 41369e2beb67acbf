"""Checkpoints are complete or refused, and their state round-trips without pickle."""

import json
import random

import numpy as np
import pytest
import torch

from learners.checkpoint import CheckpointError, CheckpointStore, digests, pack_state, read_state, write_state


def save(store: CheckpointStore, step: int, payload: bytes = b"weights") -> None:
    staging = store.staging_dir(step)
    (staging / "model").mkdir(parents=True)
    (staging / "model" / "model.safetensors").write_bytes(payload + bytes([step]))
    files = write_state(staging / "learner", "rank-000", {"step": torch.tensor(float(step))})
    files.append(staging / "model" / "model.safetensors")
    store.commit(staging, digests(staging, files), {"step": step, "version": step, "learner_workers": 1})


def test_optimizer_scheduler_and_rng_state_round_trip_exactly(tmp_path):
    param = torch.nn.Parameter(torch.randn(4))
    opt = torch.optim.AdamW([param], lr=1e-3, betas=(0.8, 0.9))
    param.grad = torch.randn(4)
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    state = {"optimizer": opt.state_dict(), "sched": sched.state_dict(), "python": random.getstate(),
             "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    write_state(tmp_path, "rank-000", state)
    back = read_state(tmp_path, "rank-000")
    assert back["optimizer"]["state"].keys() == {0}  # int keys stay ints
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.9)
    assert back["sched"] == state["sched"]
    random.setstate(back["python"])
    np.random.set_state(back["numpy"])
    assert torch.equal(back["torch"], state["torch"])
    opt2 = torch.optim.AdamW([torch.nn.Parameter(param.detach().clone())], lr=1e-3)
    opt2.load_state_dict(back["optimizer"])  # what the learner does on resume


def test_arbitrary_objects_are_refused_not_pickled(tmp_path):
    with pytest.raises(CheckpointError, match=r"\.scaler: a object"):
        pack_state({"scaler": object()})


def test_a_committed_checkpoint_verifies_and_old_ones_are_pruned(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    for step in (2, 4, 6):
        save(store, step)
    assert [p.name for p in store.steps()] == ["step-00000004", "step-00000006"]
    path, manifest = store.latest_valid()
    assert path.name == "step-00000006" and manifest["version"] == 6
    assert not list(tmp_path.glob(".staging-*"))


def test_a_corrupted_checkpoint_is_refused_and_the_previous_one_used(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep_last=3)
    save(store, 2)
    save(store, 4)
    weights = tmp_path / "step-00000004" / "model" / "model.safetensors"
    weights.write_bytes(b"flipped" + weights.read_bytes()[7:])
    with pytest.raises(CheckpointError, match="model/model.safetensors does not match its sha256"):
        store.verify(tmp_path / "step-00000004")
    path, _ = store.latest_valid()
    assert path.name == "step-00000002"
    assert "refusing checkpoint" in caplog.text


def test_a_partial_checkpoint_is_refused(tmp_path):
    store = CheckpointStore(tmp_path)
    save(store, 2)
    save(store, 4)
    (tmp_path / "step-00000004" / "manifest.json").unlink()  # as if the save died before committing
    with pytest.raises(CheckpointError, match="partial checkpoint"):
        store.verify(tmp_path / "step-00000004")
    (tmp_path / "step-00000002" / "learner" / "rank-000.json").unlink()
    with pytest.raises(CheckpointError, match="rank-000.json listed in the manifest is missing"):
        store.verify(tmp_path / "step-00000002")
    assert store.latest_valid() is None


def test_a_manifest_that_is_not_json_is_refused(tmp_path):
    store = CheckpointStore(tmp_path)
    save(store, 2)
    (tmp_path / "step-00000002" / "manifest.json").write_text("{truncated")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        store.verify(tmp_path / "step-00000002")
    json.loads((tmp_path / "step-00000002" / "learner" / "rank-000.json").read_text())


def test_a_manifest_without_its_file_list_is_refused_like_any_damaged_one(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=3)
    save(store, 2)
    save(store, 4)
    manifest = tmp_path / "step-00000004" / "manifest.json"
    manifest.write_text(json.dumps({k: v for k, v in json.loads(manifest.read_text()).items() if k != "files"}))
    with pytest.raises(CheckpointError, match="no valid file list"):
        store.verify(tmp_path / "step-00000004")
    assert store.latest_valid()[0].name == "step-00000002"


def test_saving_a_step_again_never_leaves_a_moment_without_a_complete_copy(tmp_path, monkeypatch):
    from learners import checkpoint

    store = CheckpointStore(tmp_path, keep_last=3)
    save(store, 4, b"first")
    final = tmp_path / "step-00000004"
    real_rmtree, removed = checkpoint.shutil.rmtree, []

    def checked_rmtree(path, *args, **kwargs):  # every deletion happens while a verified copy is in place
        assert not final.samefile(path), "deleted the committed copy before the new one was in place"
        store.verify(final)
        removed.append(path)
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.shutil, "rmtree", checked_rmtree)
    save(store, 4, b"second")
    assert removed, "the old copy was not removed"
    assert (final / "model" / "model.safetensors").read_bytes() == b"second" + bytes([4])
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000004"]


def test_without_an_atomic_swap_the_old_copy_steps_aside_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    from learners import checkpoint

    monkeypatch.setattr(checkpoint, "exchange_paths", lambda a, b: False)  # e.g. NFS
    store = CheckpointStore(tmp_path, keep_last=3)
    save(store, 4, b"first")
    save(store, 4, b"second")
    assert (tmp_path / "step-00000004" / "model" / "model.safetensors").read_bytes() == b"second" + bytes([4])
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000004"]


def test_every_checkpoint_file_and_directory_reaches_stable_storage_before_commit(tmp_path, monkeypatch):
    import os

    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    store = CheckpointStore(tmp_path)
    save(store, 2)
    final = tmp_path / "step-00000002"
    files = json.loads((final / "manifest.json").read_text())["files"]
    staged = {p.split("/.staging-step-00000002-")[-1].split("/", 1)[-1] for p in synced if ".staging-" in p}
    assert set(files) | {"manifest.json"} <= staged
    assert str(tmp_path) in synced  # the rename into place


def test_pruning_keeps_the_newest_commits_not_the_highest_steps(tmp_path):
    """keep_last=1: the newest checkpoint fails to verify, the run resumes from an older one and commits a lower
    step than the broken one; that fresh commit is kept, and the run can resume from it."""
    store = CheckpointStore(tmp_path, keep_last=2)
    save(store, 30)
    save(store, 40)
    (tmp_path / "step-00000040" / "model" / "model.safetensors").write_bytes(b"torn")
    assert store.latest_valid()[0].name == "step-00000030"
    store.keep_last = 1
    save(store, 35)  # the resumed run's next checkpoint
    assert [p.name for p in store.steps()] == ["step-00000035"]
    assert store.latest_valid()[0].name == "step-00000035"


def test_the_checkpoint_just_committed_is_never_pruned(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=1)
    for step in (10, 20, 5):
        save(store, step)
    assert [p.name for p in store.steps()] == ["step-00000005"]


def test_a_rollback_moves_the_abandoned_timeline_aside(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=5)
    for step in (10, 20, 30):
        save(store, step)
    moved = store.set_aside(after_step=10)
    assert [p.name for p in moved] == ["step-00000020", "step-00000030"]
    assert moved[0].parent.name.startswith("abandoned-") and all(p.is_dir() for p in moved)
    assert [p.name for p in store.steps()] == ["step-00000010"] and store.latest_valid()[0].name == "step-00000010"
    assert store.set_aside(after_step=10) == []


def test_resuming_an_earlier_step_of_the_same_run_leaves_the_later_ones_behind(tmp_path, caplog):
    from areal.config import CheckpointConfig, TrainConfig
    from launch.train import find_resume_checkpoint, leave_later_timeline

    store = CheckpointStore(tmp_path / "checkpoints", keep_last=5)
    for step in (10, 20, 30):
        save(store, step)
    cfg = TrainConfig(out_dir=str(tmp_path), checkpoint=CheckpointConfig(
        resume_from=str(tmp_path / "checkpoints" / "step-00000020"), keep_last=5))
    resume = find_resume_checkpoint(cfg)
    moved = leave_later_timeline(cfg, resume)
    assert [p.name for p in moved] == ["step-00000030"] and "step-00000030" in caplog.text
    resumed = TrainConfig(out_dir=str(tmp_path), checkpoint=CheckpointConfig(resume=True, keep_last=5))
    assert find_resume_checkpoint(resumed)[0].name == "step-00000020"  # not the abandoned step 30
