"""Diffusion rollouts as the controller and learners see them: chain groups, batches, checkpointed form."""

import json

import pytest
import torch

from areal.algos.ddpo import PerPromptStatTracker
from areal.batching import ChainBatcher
from areal.types import FAILED_REWARD, ChainTrajectory, TrajectoryGroup, group_from_dict, group_to_dict


def chain(prompt: str, reward: float, steps: int = 3, seed: int = 0) -> ChainTrajectory:
    g = torch.Generator().manual_seed(seed)
    timesteps = tuple(range(900, 0, -900 // steps))[:steps]
    return ChainTrajectory(prompt, torch.randn(steps + 1, 3, 4, 4, generator=g), timesteps,
                           tuple(torch.randn(steps, generator=g).tolist()), (0,) * steps, reward)


def group(prompt: str, rewards, version: int = 0) -> TrajectoryGroup:
    return TrajectoryGroup(prompt, tuple(chain(prompt, r, seed=i) for i, r in enumerate(rewards)), version)


def test_a_chain_needs_one_logprob_and_version_per_step_and_one_more_latent():
    with pytest.raises(ValueError, match="S \\+ 1 latents"):
        ChainTrajectory("p", torch.zeros(3, 3, 4, 4), (10, 5, 1), (0.0,) * 3, (0,) * 3, 1.0)


def test_group_counts_denoising_steps_as_its_actions():
    assert group("p", [1.0, 2.0]).num_actions == 6


def test_checkpointed_groups_come_back_bit_for_bit():
    original = group("p", [0.1, -2.5])
    restored = group_from_dict(json.loads(json.dumps(group_to_dict(original))))
    for a, b in zip(original.trajectories, restored.trajectories):
        assert torch.equal(a.latents, b.latents) and a.latents.dtype == b.latents.dtype
        assert (a.timesteps, a.logprobs, a.versions, a.reward, a.prompt) == \
            (b.timesteps, b.logprobs, b.versions, b.reward, b.prompt)


def test_batch_rows_are_chains_with_per_prompt_normalised_advantages():
    batcher = ChainBatcher(PerPromptStatTracker(buffer_size=8, min_count=2))
    batch = batcher.build([group("cat", [1.0, 3.0]), group("dog", [10.0, 30.0])])
    assert batch.latents.shape == (4, 4, 3, 4, 4) and batch.timesteps.shape == (4, 3)
    assert batch.prompts == ("cat", "cat", "dog", "dog") and batch.num_actions == 12
    # each prompt is normalised by its own rewards: both pairs map to -1, +1
    torch.testing.assert_close(batch.advantages, torch.tensor([-1.0, 1.0, -1.0, 1.0]), atol=1e-5, rtol=0)
    halves = batch.split(2)
    assert [h.prompts for h in halves] == [("cat", "cat"), ("dog", "dog")]


def test_the_reward_history_is_part_of_the_run_state():
    batcher = ChainBatcher(PerPromptStatTracker(buffer_size=8, min_count=2))
    batcher.build([group("cat", [1.0, 3.0])])
    resumed = ChainBatcher(PerPromptStatTracker(buffer_size=8, min_count=2))
    resumed.load_state_dict(json.loads(json.dumps(batcher.state_dict())))
    nxt = [group("cat", [2.0, 2.5])]
    torch.testing.assert_close(resumed.build(nxt).advantages, batcher.build(nxt).advantages)


def test_without_stat_tracking_each_group_is_normalised_alone():
    batch = ChainBatcher(None).build([group("cat", [1.0, 3.0]), group("cat", [5.0, 5.0])])
    torch.testing.assert_close(batch.advantages, torch.tensor([-1.0, 1.0, 0.0, 0.0]), atol=1e-5, rtol=0)


def test_groups_of_different_sizes_are_normalised_each_on_its_own_samples():
    batch = ChainBatcher(None).build([group("cat", [1.0, 3.0]), group("dog", [0.0, 3.0, 6.0])])
    torch.testing.assert_close(batch.advantages, torch.tensor([-1.0, 1.0, -1.2247, 0.0, 1.2247]), atol=1e-4, rtol=0)


def test_text_groups_are_refused_by_the_chain_batcher():
    from areal.types import Trajectory

    text = TrajectoryGroup("p", (Trajectory((1,), (2,), (-0.1,), (0,), 1.0),), 0)
    with pytest.raises(TypeError, match="ChainTrajectory"):
        ChainBatcher(None).build([text])


def test_advantages_are_centred_within_each_group_even_when_the_history_baseline_is_off():
    """A prompt whose reward history is higher than its current group still gets zero-mean advantages
    (stale chains would otherwise push the denoiser further along its last change)."""
    batcher = ChainBatcher(PerPromptStatTracker(buffer_size=16, min_count=2))
    batcher.build([group("cat", [10.0, 12.0, 11.0, 13.0])])
    batch = batcher.build([group("cat", [1.0, 3.0]), group("dog", [0.0, 5.0])])
    assert abs(float(batch.advantages[:2].sum())) < 1e-6 and abs(float(batch.advantages[2:].sum())) < 1e-6
    assert batch.advantages[1] > batch.advantages[0] and batch.advantages[3] > batch.advantages[2]


JPEG_LIKE = [-1.4, -1.5, FAILED_REWARD, -1.3]  # compressibility rewards: 0 would be the best score there is


@pytest.mark.parametrize("tracked", [False, True])
def test_a_failed_chain_carries_no_loss_and_stays_out_of_the_statistics(tracked):
    def batcher():
        return ChainBatcher(PerPromptStatTracker(buffer_size=8, min_count=2) if tracked else None)

    with_failure = batcher()
    batch = with_failure.build([group("cat", JPEG_LIKE), group("dog", [0.5, 1.5])])
    assert batch.advantages[2] == 0 and torch.isfinite(batch.advantages).all()
    # the scored chains get what they would get had the failed one never been sampled
    without = batcher().build([group("cat", [-1.4, -1.5, -1.3]), group("dog", [0.5, 1.5])])
    torch.testing.assert_close(batch.advantages[[0, 1, 3, 4, 5]], without.advantages)
    assert batch.advantages[3] > 0 > batch.advantages[1]
    if tracked:
        assert with_failure.state_dict()["tracker"]["cat"] == [-1.4, -1.5, -1.3]


def test_a_group_of_failed_chains_gets_no_advantage():
    batcher = ChainBatcher(PerPromptStatTracker(buffer_size=8, min_count=2))
    batch = batcher.build([group("cat", [FAILED_REWARD, FAILED_REWARD]), group("dog", [0.5, 1.5])])
    assert batch.advantages[:2].tolist() == [0.0, 0.0] and "cat" not in batcher.state_dict()["tracker"]
    torch.testing.assert_close(batch.advantages[2:], torch.tensor([-1.0, 1.0]), atol=1e-5, rtol=0)
