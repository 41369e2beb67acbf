"""Trajectory types validate themselves; build_train_batch lays out prompt, completion and advantages."""

import pytest
import torch

from areal.batching import build_train_batch
from areal.types import TrainBatch, Trajectory, TrajectoryGroup


def traj(prompt, output, reward, version=0):
    return Trajectory(tuple(prompt), tuple(output), tuple(-0.5 for _ in output), tuple(version for _ in output), reward)


def test_trajectory_needs_one_logprob_and_version_per_token():
    with pytest.raises(ValueError, match="one entry per token"):
        Trajectory((1,), (2, 3), (-0.1,), (0, 0), 1.0)


def test_batch_layout_and_grpo_advantages():
    groups = [
        TrajectoryGroup("a", (traj([1, 2], [5], 1.0), traj([1, 2], [6, 7], 0.0)), submit_version=0),
        TrajectoryGroup("b", (traj([3], [8, 9, 4], 0.0, version=1), traj([3], [4], 0.0)), submit_version=1),
    ]
    batch = build_train_batch(groups, "grpo", pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 5, 0], [1, 2, 6, 7], [3, 8, 9, 4], [3, 4, 0, 0]]
    assert batch.loss_mask.tolist() == [
        [False, False, True, False],
        [False, False, True, True],
        [False, True, True, True],
        [False, True, False, False],
    ]
    assert batch.versions[2].tolist() == [-1, 1, 1, 1]
    assert batch.behavior_logprobs[1].tolist() == [0.0, 0.0, -0.5, -0.5]
    adv = batch.advantages
    assert adv[0, 2].item() > 0 > adv[1, 2].item()  # group a: the rewarded sample is pushed up
    assert adv[2:].abs().sum().item() == 0  # group b: equal rewards carry no signal
    assert batch.num_actions == 7


def test_groups_of_different_sizes_are_refused():
    groups = [TrajectoryGroup("a", (traj([1], [2], 1.0),), 0),
              TrajectoryGroup("b", (traj([1], [2], 1.0), traj([1], [2], 0.0)), 0)]
    with pytest.raises(ValueError, match="same number of samples"):
        build_train_batch(groups, "grpo", pad_id=0)


def test_split_keeps_rows_together():
    t = torch.arange(12).reshape(6, 2)
    batch = TrainBatch(t, t, t.bool(), t.float(), t.float(), t)
    parts = batch.split(4)
    assert [p.input_ids.shape[0] for p in parts] == [2, 2, 1, 1]
    assert torch.equal(torch.cat([p.input_ids for p in parts]), t)
