"""One episode: a prompt, n sampled completions, their rewards (DESIGN.md "Workflow")."""

from __future__ import annotations

import dataclasses
import math
import random
import time

from areal.types import Trajectory, TrajectoryGroup
from rollouts.engines.base import Engine, SamplingConfig
from rollouts.prompt_format import PromptFormat
from rollouts.reward_pool import RewardPool
from rollouts.rewards import RewardOutcome, failure_info
from rollouts.tasks.base import Task, TaskSample

ENCODED_PROMPTS_KEPT = 100_000  # token ids remembered per prompt text (a few MB for short prompts)


class SingleTurnWorkflow:
    """prompt -> n samples -> rewards, as one TrajectoryGroup.

    ``rewards`` scores completions with the task's reward in killable processes; the workflow owns it and
    closes it in ``close``. A failed reward leaves its sample with reward NaN (``Trajectory.reward_ok`` False).
    """

    action_unit = "tokens"

    def __init__(self, task: Task, tokenizer, sampling: SamplingConfig, n: int, rewards: RewardPool,
                 length_tail: tuple[int, float] | None = None, prompt_format: PromptFormat = PromptFormat()):
        self.task, self.tokenizer, self.sampling, self.n = task, tokenizer, sampling, n
        self.rewards, self.prompt_format = rewards, prompt_format
        self.length_tail = length_tail  # (median, sigma) of a lognormal forced length, or None
        self._encoded: dict[str, list[int]] = {}

    def sampling_for_group(self, seed: int | None) -> SamplingConfig:
        """The sampling settings of one group, drawn from ``seed`` alone (no hidden RNG state, so a
        resumed run samples the same): the engine's sampling seed and, when configured, a long-tailed
        forced length (generation continues past EOS; the text the reward scores ends there).

        Reasoning outputs have long-tailed lengths, which is what makes synchronous RL wait
        on stragglers; the benchmark reproduces that on a task whose answers are short.
        """
        sampling = dataclasses.replace(self.sampling, seed=seed)
        if self.length_tail is None:
            return sampling
        median, sigma = self.length_tail
        length = int(round(math.exp(random.Random(seed).gauss(math.log(median), sigma))))
        return dataclasses.replace(sampling, forced_new_tokens=max(1, min(length, self.sampling.max_new_tokens)))

    def encode(self, sample: TaskSample) -> list[int]:
        """Prompt token ids: the raw text or a chat turn (``task.chat_template``), special tokens as the model
        expects them. Remembered per prompt text: prompts come back (epochs, every evaluation), and tokenizing
        them again was a sixth of the rollout actor's event-loop time on the CPU demo."""
        ids = self._encoded.get(sample.prompt)
        if ids is None:
            ids = self.prompt_format.encode(self.tokenizer, sample.prompt)
            if len(self._encoded) < ENCODED_PROMPTS_KEPT:
                self._encoded[sample.prompt] = ids
        return list(ids)

    async def run(self, engine: Engine, sample: TaskSample, submit_version: int,
                  seed: int | None = None) -> TrajectoryGroup:
        """Sample the group (``seed``: its sampling seed) and score every completion in the reward pool."""
        prompt_ids = self.encode(sample)
        began = time.perf_counter()
        completions = await engine.generate(prompt_ids, self.sampling_for_group(seed), self.n)
        generated = time.perf_counter()
        outcomes = await self.rewards.score_many([c.text for c in completions], sample)
        trajectories = tuple(
            Trajectory(tuple(prompt_ids), c.token_ids, c.logprobs, c.versions, o.value, c.text, c.finish_reason)
            for c, o in zip(completions, outcomes)
        )
        timing = {"engine_seconds": generated - began, "reward_seconds": time.perf_counter() - generated}
        return TrajectoryGroup(sample.id, trajectories, submit_version, {**failure_info(outcomes), **timing})

    async def evaluate(self, engine: Engine, sample: TaskSample) -> tuple[RewardOutcome, str]:
        """Greedy (reward outcome, completion) of a held-out sample under the engine's current weights; a
        failed reward is an outcome, never a score or an exception."""
        greedy = SamplingConfig(max_new_tokens=self.sampling.max_new_tokens, temperature=0.0)
        (completion,) = await engine.generate(self.encode(sample), greedy, 1)
        return await self.rewards.score(completion.text, sample), completion.text

    def close(self) -> None:
        """Stop the reward processes."""
        self.rewards.close()
