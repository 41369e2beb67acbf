"""Trajectory types validate themselves; build_train_batch lays out prompt, completion and advantages."""

import json
import math

import pytest
import torch

from areal.algos.advantages import ADVANTAGE_ESTIMATORS
from areal.batching import build_train_batch
from areal.controller import ACCEPTED, FILTERED, RolloutController
from areal.staleness import StalenessGate
from areal.types import FAILED_REWARD, TrainBatch, Trajectory, TrajectoryGroup, group_from_dict, group_to_dict


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


JPEG_LIKE = [-1.4, -1.5, FAILED_REWARD, -1.3]  # compressibility rewards: 0 would be the best score there is


@pytest.mark.parametrize("estimator", sorted(ADVANTAGE_ESTIMATORS))
def test_a_failed_reward_carries_no_loss_and_stays_out_of_its_group(estimator):
    group = TrajectoryGroup("a", tuple(traj([1, 2], [5, 6, 7], r) for r in JPEG_LIKE), 0)
    batch = build_train_batch([group], estimator, pad_id=0)
    assert not batch.loss_mask[2].any() and not batch.advantages[2].any()
    assert batch.num_actions == 9  # the three scored samples' tokens
    # the scored samples get exactly what they would get in a group without the failed one
    scored = TrajectoryGroup("a", tuple(t for t in group.trajectories if t.reward_ok), 0)
    alone = build_train_batch([scored], estimator, pad_id=0)
    torch.testing.assert_close(batch.advantages[[0, 1, 3]], alone.advantages)
    assert batch.advantages[3, 2] > 0 > batch.advantages[1, 2]  # -1.3 is the best score, the failure is nothing


def test_a_group_knows_which_rewards_failed():
    group = TrajectoryGroup("a", tuple(traj([1], [5], r) for r in JPEG_LIKE), 0)
    assert group.reward_ok == [True, True, False, True] and group.rewards == [-1.4, -1.5, -1.3]
    with pytest.raises(ValueError, match="FAILED_REWARD"):
        traj([1], [5], math.inf)


def test_failed_rewards_survive_a_checkpoint_as_strict_json():
    group = TrajectoryGroup("a", tuple(traj([1], [5], r) for r in JPEG_LIKE), 0)
    restored = group_from_dict(json.loads(json.dumps(group_to_dict(group), allow_nan=False)))
    assert restored.reward_ok == group.reward_ok and restored.rewards == group.rewards


@pytest.mark.parametrize("filter_flat", [False, True])
def test_a_group_whose_rewards_all_failed_is_rejected(filter_flat):
    ctl = RolloutController(StalenessGate(1, 1, 10), num_prompts=3, filter_zero_variance=filter_flat)
    failed = TrajectoryGroup("a", tuple(traj([1], [5], FAILED_REWARD) for _ in range(2)), 0)
    assert ctl.on_group(ctl.next_rollout().ticket, failed) == FILTERED
    one_failed = TrajectoryGroup("b", (traj([1], [5], FAILED_REWARD), traj([1], [5], 0.0), traj([1], [5], 1.0)), 0)
    assert ctl.on_group(ctl.next_rollout().ticket, one_failed) == ACCEPTED
    assert ctl.unaccounted() == 0 and list(ctl.buffer) == [one_failed]
