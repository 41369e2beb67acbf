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
    store.commit(staging, digests(staging, files), {"step": step, "version": step})


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
