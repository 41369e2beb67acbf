"""One episode: a prompt, n sampled completions, their rewards (DESIGN.md "Workflow")."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
import zlib

from areal.evaluation import EvalRecord, EvalSample
from areal.types import Trajectory, TrajectoryGroup
from rollouts.engines.base import Completion, Engine, SamplingConfig
from rollouts.prompt_format import PromptFormat
from rollouts.reward_pool import RewardPool
from rollouts.rewards import RewardOutcome, failure_info
from rollouts.rewards.base import RewardInput, RewardState
from rollouts.tasks.base import TaskSample

ENCODED_PROMPTS_KEPT = 100_000  # token ids remembered per prompt text (a few MB for short prompts)


class SingleTurnWorkflow:
    """prompt -> n samples -> rewards, as one TrajectoryGroup.

    ``rewards`` scores completions with the task's rewards in killable processes; the workflow owns it and
    closes it in ``close``. A failed reward leaves its sample with reward NaN (``Trajectory.reward_ok`` False).
    """

    action_unit = "tokens"

    def __init__(self, tokenizer, sampling: SamplingConfig, n: int, rewards: RewardPool,
                 length_tail: tuple[int, float] | None = None, prompt_format: PromptFormat = PromptFormat(),
                 total_steps: int = 0, max_model_len: int = 0):
        """``max_model_len``: the engine's (0 = unbounded); a prompt that does not fit fails its sample."""
        self.tokenizer, self.sampling, self.n = tokenizer, sampling, n
        self.rewards, self.prompt_format, self.total_steps = rewards, prompt_format, total_steps
        self.max_model_len = max_model_len
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
        key = sample.prompt if isinstance(sample.prompt, str) else json.dumps(sample.prompt)
        ids = self._encoded.get(key)
        if ids is None:
            ids = self.prompt_format.encode(self.tokenizer, sample.prompt)
            if len(self._encoded) < ENCODED_PROMPTS_KEPT:
                self._encoded[key] = ids
        return list(ids)

    async def run(self, engine: Engine, sample: TaskSample, submit_version: int,
                  seed: int | None = None) -> TrajectoryGroup:
        """Sample the group (``seed``: its sampling seed) and score every completion in the reward pool."""
        prompt_ids = self.encode(sample)
        if self.too_long(prompt_ids):
            return self.unfit_group(sample, prompt_ids, submit_version)
        began = time.perf_counter()
        completions = await engine.generate(prompt_ids, self.sampling_for_group(seed), self.n)
        generated = time.perf_counter()
        outcomes, logged = await self.rewards.score_group(reward_inputs(completions), sample, "train",
                                                          RewardState(submit_version, self.total_steps))
        trajectories = tuple(
            Trajectory(tuple(prompt_ids), c.token_ids, c.logprobs, c.versions, o.value, c.text, c.finish_reason)
            for c, o in zip(completions, outcomes)
        )
        info = {**failure_info(outcomes), **component_info(outcomes, logged),
                "engine_seconds": generated - began, "reward_seconds": time.perf_counter() - generated}
        return TrajectoryGroup(sample.id, trajectories, submit_version, info)

    async def evaluate(self, engine: Engine, sample: TaskSample, suite: str = "eval", k: int = 0) -> EvalRecord:
        """The greedy completion of a held-out sample under the engine's current weights and, with ``k``, k
        completions sampled at the training temperature from a seed of the sample's own (every evaluation
        draws alike; only the weights differ), scored with the rewards of ``suite``. A failed reward is an
        outcome, never a score or an exception."""
        prompt_ids = self.encode(sample)
        if self.too_long(prompt_ids):
            failed = EvalSample("", math.nan, "error", self.too_long(prompt_ids))
            return EvalRecord(sample.id, sample.prompt_text, sample.reference, failed, (failed,) * k)
        greedy = SamplingConfig(max_new_tokens=self.sampling.max_new_tokens, temperature=0.0)
        completions = list(await engine.generate(prompt_ids, greedy, 1))
        if k:
            seed = zlib.crc32(sample.id.encode()) & 0x7FFFFFFF
            completions += await engine.generate(prompt_ids, dataclasses.replace(self.sampling, seed=seed), k)
        outcomes = await self.rewards.score_many(reward_inputs(completions), sample, suite)
        scored = [eval_sample(c, o) for c, o in zip(completions, outcomes)]
        return EvalRecord(sample.id, sample.prompt_text, sample.reference, scored[0], tuple(scored[1:]))

    def too_long(self, prompt_ids: list[int]) -> str:
        """Why vLLM would refuse this prompt (it needs at least one token of room), or "" when it fits."""
        if not self.max_model_len or len(prompt_ids) < self.max_model_len:
            return ""
        return (f"prompt of {len(prompt_ids)} tokens does not fit engine.max_model_len={self.max_model_len}: left "
                "out (raise engine.max_model_len, or shorten the prompt)")

    def unfit_group(self, sample: TaskSample, prompt_ids: list[int], submit_version: int) -> TrajectoryGroup:
        """A group whose prompt the engine would refuse: every sample failed (no reward, nothing to train), with
        the reason, instead of an exception that would fail the worker and requeue the prompt forever."""
        failed = Trajectory(tuple(prompt_ids), (), (), (), math.nan, "", "failed")
        info = {"reward_failures": {"error": self.n}, "reward_failure_example": self.too_long(prompt_ids),
                "prompt_too_long": 1}
        return TrajectoryGroup(sample.id, (failed,) * self.n, submit_version, info)

    def close(self) -> None:
        """Stop the reward processes."""
        self.rewards.close()


def reward_inputs(completions: list[Completion]) -> list[RewardInput]:
    return [RewardInput(c.text, tuple(c.token_ids), c.finish_reason) for c in completions]


def eval_sample(completion: Completion, outcome: RewardOutcome) -> EvalSample:
    return EvalSample(completion.text, outcome.value, outcome.status, outcome.detail, outcome.components,
                      len(completion.token_ids), completion.finish_reason)


def component_info(outcomes: list[RewardOutcome], logged: dict[str, list[float]]) -> dict:
    """Each reward function's values over the group (None: n/a, NaN: failed) and what the functions logged
    (``log_metric``), for the driver's reward/<name> metrics."""
    names = [name for name, _ in outcomes[0].components] if outcomes else []
    return {"reward_components": {name: [o.components[i][1] for o in outcomes] for i, name in enumerate(names)},
            "reward_logged": logged}
