"""A diffusion episode: n chains of one prompt, each final image scored; bad rewards are recorded, not fatal."""

import asyncio
import math

import numpy as np
import pytest

from areal.config import DiffusionConfig
from rollouts.diffusion_workflow import DiffusionWorkflow
from rollouts.engines.diffusion_sampler import DiffusionSampler
from rollouts.image_rewards import JpegCompressibility
from rollouts.reward_pool import RewardPool
from rollouts.tasks.image_prompts import ImagePromptTask, load_prompts
from tests.fakes import BrokenImageReward, FlakyImageReward
from tests.tiny_pipelines import class_conditional_pipeline


@pytest.fixture(scope="module")
def sampler(tmp_path_factory):
    return DiffusionSampler(str(class_conditional_pipeline(tmp_path_factory.mktemp("pipe"))),
                            DiffusionConfig(num_steps=3))


def workflow_for(task: ImagePromptTask, n: int) -> DiffusionWorkflow:
    """A workflow with one reward process (calls reach it in order); close it after use."""
    return DiffusionWorkflow(n, RewardPool(task.score, workers=1, timeout_s=5.0, memory_mb=1024))


def test_a_group_holds_n_scored_chains_of_its_prompt(sampler, tmp_path):
    task = ImagePromptTask(load_prompts("", sampler.policy.path), JpegCompressibility(), eval_size=2)
    workflow = workflow_for(task, n=3)
    group = asyncio.run(workflow.run(sampler, task.train[1], 7, seed=1))
    workflow.close()
    assert group.prompt_id == "p1" and group.submit_version == 7 and len(group.trajectories) == 3
    assert all(t.prompt == "blue" and t.reward < 0 and len(t.timesteps) == 3 for t in group.trajectories)
    assert group.info["reward_failures"] == {}


def test_rewards_that_raise_or_return_nan_are_counted_and_never_scored(sampler):
    task = ImagePromptTask(["red"], FlakyImageReward(), eval_size=1)
    workflow = workflow_for(task, n=4)
    group = asyncio.run(workflow.run(sampler, task.train[0], 0, seed=0))
    workflow.close()
    assert group.info["reward_failures"] == {"error": 1, "nonfinite": 1}
    assert "scorer crashed" in group.info["reward_failure_example"]
    assert group.reward_ok == [False, False, True, True] and len(group.rewards) == 2
    assert all(math.isnan(t.reward) for t in group.trajectories[:2])
    assert all(math.isfinite(r) and r > 0 for r in group.rewards)  # brightness, not 0


def test_a_failed_held_out_reward_is_an_outcome_not_a_score(sampler):
    task = ImagePromptTask(["red"], BrokenImageReward(), eval_size=1)
    workflow = workflow_for(task, n=1)
    image = asyncio.run(workflow.evaluate(sampler, task.eval[0])).greedy
    workflow.close()
    assert image.status == "error" and math.isnan(image.reward) and "scorer crashed" in image.detail
    assert image.output.dtype == np.uint8


def test_evaluation_draws_the_same_noise_every_time(sampler):
    task = ImagePromptTask(["red", "blue"], JpegCompressibility(), eval_size=3)
    workflow = workflow_for(task, n=2)
    first = asyncio.run(workflow.evaluate(sampler, task.eval[2])).greedy
    again = asyncio.run(workflow.evaluate(sampler, task.eval[2])).greedy
    workflow.close()
    assert first.ok and first.reward == again.reward and np.array_equal(first.output, again.output)
    assert [s.prompt for s in task.eval] == ["red", "blue", "red"]


def test_prompts_come_from_a_file_or_the_pipeline_classes(sampler, tmp_path):
    (tmp_path / "prompts.txt").write_text("a cat\n\n a dog \n")
    assert load_prompts(str(tmp_path / "prompts.txt"), "") == ["a cat", "a dog"]
    assert load_prompts("", sampler.policy.path) == ["red", "blue"]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="task.path"):
        load_prompts(str(tmp_path / "empty.txt"), "")
