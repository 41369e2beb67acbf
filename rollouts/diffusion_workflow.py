"""One diffusion episode: a prompt, n denoising chains, a reward for each final image (DDPO)."""

from __future__ import annotations

import time
import zlib

import numpy as np

from areal.evaluation import EvalRecord, EvalSample
from areal.types import ChainTrajectory, TrajectoryGroup
from rollouts.engines.diffusion_sampler import DiffusionSampler
from rollouts.reward_pool import RewardPool
from rollouts.rewards import failure_info
from rollouts.tasks.base import TaskSample


def eval_seed(sample_id: str) -> int:
    """A fixed seed per held-out sample: every evaluation draws the same noise for it."""
    return int(np.random.SeedSequence([zlib.crc32(sample_id.encode()), 7919]).generate_state(1)[0] >> 1)


class DiffusionWorkflow:
    """prompt -> n chains -> image rewards (scored in the reward pool's processes, off the sampling loop), as
    one group. The workflow owns ``rewards`` and closes it in ``close``; a failed reward leaves its chain with
    reward NaN (``ChainTrajectory.reward_ok`` False)."""

    action_unit = "denoising_steps"

    def __init__(self, n: int, rewards: RewardPool):
        self.n, self.rewards = n, rewards

    async def run(self, engine: DiffusionSampler, sample: TaskSample, submit_version: int,
                  seed: int | None = None) -> TrajectoryGroup:
        """Sample the group's chains from ``seed`` and score each final image."""
        began = time.perf_counter()
        chains = await engine.sample(sample.prompt, self.n, 0 if seed is None else seed)
        sampled = time.perf_counter()
        outcomes = await self.rewards.score_many([c.image for c in chains], sample)
        trajectories = tuple(ChainTrajectory(sample.prompt, c.latents, c.timesteps, c.logprobs, c.versions, o.value)
                             for c, o in zip(chains, outcomes))
        timing = {"engine_seconds": sampled - began, "reward_seconds": time.perf_counter() - sampled}
        return TrajectoryGroup(sample.id, trajectories, submit_version, {**failure_info(outcomes), **timing})

    async def evaluate(self, engine: DiffusionSampler, sample: TaskSample, suite: str = "eval",
                       k: int = 0) -> EvalRecord:
        """The image of a held-out sample from its fixed seed under the current weights, with its reward; a
        failed reward is an outcome, never a score (``k`` is for text: an image has no pass@k)."""
        (chain,) = await engine.sample(sample.prompt, 1, eval_seed(sample.id))
        o = await self.rewards.score(chain.image, sample)
        return EvalRecord(sample.id, sample.prompt_text, sample.reference,
                          EvalSample(chain.image, o.value, o.status, o.detail, o.components))

    def close(self) -> None:
        """Stop the reward processes."""
        self.rewards.close()
