"""A diffusion episode: n chains of one prompt, each final image scored; bad rewards are recorded, not fatal."""

import asyncio
import itertools
import math

import numpy as np
import pytest

from areal.config import DiffusionConfig
from rollouts.diffusion_workflow import DiffusionWorkflow
from rollouts.engines.diffusion_sampler import DiffusionSampler
from rollouts.image_rewards import JpegCompressibility
from rollouts.tasks.image_prompts import ImagePromptTask, load_prompts
from tests.tiny_pipelines import class_conditional_pipeline


@pytest.fixture(scope="module")
def sampler(tmp_path_factory):
    return DiffusionSampler(str(class_conditional_pipeline(tmp_path_factory.mktemp("pipe"))),
                            DiffusionConfig(num_steps=3))


class FlakyReward:
    """Brightness; the first call raises, the second returns NaN."""

    def __init__(self):
        self.calls = itertools.count()

    def __call__(self, image, prompt):
        call = next(self.calls)
        if call == 0:
            raise RuntimeError("scorer crashed")
        return math.nan if call == 1 else float(image.mean())


def test_a_group_holds_n_scored_chains_of_its_prompt(sampler, tmp_path):
    task = ImagePromptTask(load_prompts("", sampler.policy.path), JpegCompressibility(), eval_size=2)
    group = asyncio.run(DiffusionWorkflow(task, n=3, reward_timeout_s=5).run(sampler, task.train[1], 7, seed=1))
    assert group.prompt_id == "p1" and group.submit_version == 7 and len(group.trajectories) == 3
    assert all(t.prompt == "blue" and t.reward < 0 and len(t.timesteps) == 3 for t in group.trajectories)
    assert group.info["reward_failures"] == {}


def test_rewards_that_raise_or_return_nan_score_zero_and_are_counted(sampler):
    task = ImagePromptTask(["red"], FlakyReward(), eval_size=1)
    group = asyncio.run(DiffusionWorkflow(task, n=4, reward_timeout_s=5).run(sampler, task.train[0], 0, seed=0))
    assert group.info["reward_failures"] == {"error": 1, "nonfinite": 1}
    assert "scorer crashed" in group.info["reward_failure_example"] or "nan" in group.info["reward_failure_example"]
    assert sorted(t.reward for t in group.trajectories)[:2] == [0.0, 0.0]
    assert all(math.isfinite(t.reward) for t in group.trajectories)


def test_evaluation_draws_the_same_noise_every_time(sampler):
    task = ImagePromptTask(["red", "blue"], JpegCompressibility(), eval_size=3)
    workflow = DiffusionWorkflow(task, n=2, reward_timeout_s=5)
    first = asyncio.run(workflow.evaluate(sampler, task.eval[2]))
    again = asyncio.run(workflow.evaluate(sampler, task.eval[2]))
    assert first[0] == again[0] and np.array_equal(first[1], again[1])
    assert [s.prompt for s in task.eval] == ["red", "blue", "red"]


def test_prompts_come_from_a_file_or_the_pipeline_classes(sampler, tmp_path):
    (tmp_path / "prompts.txt").write_text("a cat\n\n a dog \n")
    assert load_prompts(str(tmp_path / "prompts.txt"), "") == ["a cat", "a dog"]
    assert load_prompts("", sampler.policy.path) == ["red", "blue"]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="task.path"):
        load_prompts(str(tmp_path / "empty.txt"), "")
