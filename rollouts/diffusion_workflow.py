"""One diffusion episode: a prompt, n denoising chains, a reward for each final image (DDPO)."""

from __future__ import annotations

import asyncio
import zlib

import numpy as np

from areal.types import ChainTrajectory, TrajectoryGroup
from rollouts.engines.diffusion_sampler import DiffusionSampler
from rollouts.rewards import failure_info, score_safely
from rollouts.tasks.base import Task, TaskSample


def eval_seed(sample_id: str) -> int:
    """A fixed seed per held-out sample: every evaluation draws the same noise for it."""
    return int(np.random.SeedSequence([zlib.crc32(sample_id.encode()), 7919]).generate_state(1)[0] >> 1)


class DiffusionWorkflow:
    """prompt -> n chains -> image rewards (scored in threads, off the sampling loop), as one group."""

    action_unit = "denoising_steps"

    def __init__(self, task: Task, n: int, reward_timeout_s: float):
        self.task, self.n, self.reward_timeout_s = task, n, reward_timeout_s

    async def run(self, engine: DiffusionSampler, sample: TaskSample, submit_version: int,
                  seed: int | None = None) -> TrajectoryGroup:
        """Sample the group's chains from ``seed`` and score each final image."""
        chains = await engine.sample(sample.prompt, self.n, 0 if seed is None else seed)
        outcomes = await asyncio.gather(*(
            score_safely(lambda c=c: self.task.score(c.image, sample), self.reward_timeout_s) for c in chains))
        trajectories = tuple(ChainTrajectory(sample.prompt, c.latents, c.timesteps, c.logprobs, c.versions, o.value)
                             for c, o in zip(chains, outcomes))
        return TrajectoryGroup(sample.id, trajectories, submit_version, failure_info(outcomes))

    async def evaluate(self, engine: DiffusionSampler, sample: TaskSample) -> tuple[float, np.ndarray]:
        """(reward, image) of a held-out sample from its fixed seed under the current weights."""
        (chain,) = await engine.sample(sample.prompt, 1, eval_seed(sample.id))
        outcome = await score_safely(lambda: self.task.score(chain.image, sample), self.reward_timeout_s)
        return outcome.value, chain.image
