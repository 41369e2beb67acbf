"""Multi-turn episodes: the policy acts, an environment answers, until it is done (DESIGN.md "Environments").

The same contract as the single-turn workflow: ``run(engine, sample, submit_version, seed)`` returns one
``TrajectoryGroup`` of ``n`` episodes of one sample, which run concurrently. Each policy turn is one engine
request that stops at the environment's stop strings (a tool call's end) or EOS; the environment's answer is
appended as token ids, and the next turn continues from the whole transcript. Token ids are the record: the
engine's ids of each turn are kept as sampled, observations are tokenized alone, and the transcript is never
re-tokenized. A trajectory's output holds the turns and observations in order: policy tokens keep their
behaviour log-probs and the version of the weights that sampled each one, observation tokens are marked
(``Trajectory.policy_mask``) so the learner never trains on them. The staleness gate counts an episode from
its group's submission, as for single turns, and so from before its first policy token.

An episode ends when the environment says done, at ``max_turns`` policy turns, or when its tokens after the
prompt reach ``max_episode_tokens``; its reward is the sum of the environment's step rewards. An environment
that fails (raises, times out, its process dies) fails the episode: reward NaN, never trained on, counted
with the reward failures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
import zlib
from dataclasses import dataclass, field

from areal.evaluation import EvalRecord, EvalSample
from areal.types import FAILED_REWARD, Trajectory, TrajectoryGroup
from rollouts.engines.base import Engine, SamplingConfig
from rollouts.envs.pool import EnvironmentFailed, EnvironmentPool
from rollouts.prompt_format import PromptFormat
from rollouts.rewards import RewardOutcome
from rollouts.tasks.base import TaskSample


@dataclass
class Episode:
    """One episode's transcript after its prompt, built turn by turn."""

    prompt_ids: list[int]
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    policy_mask: list[bool] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    reward: float = 0.0
    turns: int = 0
    tool_calls: int = 0
    valid_tool_calls: int = 0
    ended: str = ""  # done | turns | length | failed
    failure: str = ""
    engine_seconds: float = 0.0
    env_seconds: float = 0.0

    def add_turn(self, token_ids, logprobs, versions, text: str) -> None:
        self.output_ids += token_ids
        self.logprobs += logprobs
        self.versions += versions
        self.policy_mask += [True] * len(token_ids)
        self.texts.append(text)
        self.turns += 1

    def add_observation(self, token_ids: list[int], text: str) -> None:
        # an observation is no policy action: log-prob 0 (never read: masked), the version of the turn before it
        last = self.versions[-1] if self.versions else -1
        self.output_ids += token_ids
        self.logprobs += [0.0] * len(token_ids)
        self.versions += [last] * len(token_ids)
        self.policy_mask += [False] * len(token_ids)
        self.texts.append(text)

    def trajectory(self) -> Trajectory:
        reward = FAILED_REWARD if self.failure else self.reward
        return Trajectory(tuple(self.prompt_ids), tuple(self.output_ids), tuple(self.logprobs), tuple(self.versions),
                          reward, "".join(self.texts), self.ended, tuple(self.policy_mask))

    @property
    def policy_versions(self) -> set[int]:
        return {v for v, m in zip(self.versions, self.policy_mask) if m}


def turn_seed(seed: int | None, episode: int, turn: int) -> int | None:
    """The engine seed of one turn, from the group's seed alone (a resumed run samples the same)."""
    return None if seed is None else random.Random(f"{seed}/{episode}/{turn}").getrandbits(31)


class MultiTurnWorkflow:
    """sample -> n concurrent episodes against environments from ``envs`` -> one TrajectoryGroup."""

    action_unit = "tokens"

    def __init__(self, tokenizer, sampling: SamplingConfig, n: int, envs: EnvironmentPool, max_turns: int,
                 max_episode_tokens: int, prompt_format: PromptFormat = PromptFormat(), max_model_len: int = 0):
        """``sampling.max_new_tokens`` bounds one policy turn; ``max_episode_tokens`` the turns and observations
        after the prompt together; ``max_model_len`` (the engine's, 0 = unbounded) the prompt and all of them."""
        self.tokenizer, self.sampling, self.n, self.envs = tokenizer, sampling, n, envs
        self.max_turns, self.max_episode_tokens, self.prompt_format = max_turns, max_episode_tokens, prompt_format
        self.max_model_len = max_model_len

    async def run(self, engine: Engine, sample: TaskSample, submit_version: int,
                  seed: int | None = None) -> TrajectoryGroup:
        episodes = await asyncio.gather(*(self.episode(engine, sample, self.sampling, turn_seed_of(seed, i))
                                          for i in range(self.n)))
        return TrajectoryGroup(sample.id, tuple(e.trajectory() for e in episodes), submit_version,
                               group_info(episodes))

    async def episode(self, engine: Engine, sample: TaskSample, sampling: SamplingConfig, seeds) -> Episode:
        """One episode; ``seeds(turn)`` gives each turn's engine seed."""
        try:
            env = await self.envs.open(sample)
        except EnvironmentFailed as exc:
            episode = Episode(self.prompt_format.encode(self.tokenizer, sample.prompt))
            episode.ended, episode.failure = "failed", str(exc)
            return episode
        episode = Episode(self.prompt_format.encode(self.tokenizer, env.start.prompt))
        if self.max_model_len and len(episode.prompt_ids) >= self.max_model_len:
            episode.ended = "failed"  # vLLM refuses it: the episode fails, the worker goes on
            episode.failure = (f"the episode's prompt is {len(episode.prompt_ids)} tokens, not fewer than "
                               f"engine.max_model_len={self.max_model_len}: raise engine.max_model_len")
            await env.close()
            return episode
        try:
            await self._play(engine, env, episode, sampling, seeds)
        except EnvironmentFailed as exc:
            episode.ended, episode.failure = "failed", str(exc)
        finally:
            await env.close()
        return episode

    async def _play(self, engine: Engine, env, episode: Episode, sampling: SamplingConfig, seeds) -> None:
        while True:
            room = self.max_episode_tokens - len(episode.output_ids)
            if self.max_model_len:  # the whole transcript must fit the engine, the prompt included
                room = min(room, self.max_model_len - len(episode.prompt_ids) - len(episode.output_ids))
            if room <= 0:
                episode.ended = "length"
                return
            turn = dataclasses.replace(sampling, max_new_tokens=min(sampling.max_new_tokens, room),
                                       stop=env.start.stop, seed=seeds(episode.turns))
            began = time.perf_counter()
            (completion,) = await engine.generate(episode.prompt_ids + episode.output_ids, turn, 1)
            stepped = time.perf_counter()
            episode.engine_seconds += stepped - began
            episode.add_turn(list(completion.token_ids), list(completion.logprobs), list(completion.versions),
                             completion.text)
            result = await env.step(completion.text)
            episode.env_seconds += time.perf_counter() - stepped
            episode.reward += result.reward
            episode.tool_calls = int(result.info.get("tool_calls", episode.tool_calls))
            episode.valid_tool_calls = int(result.info.get("valid_tool_calls", episode.valid_tool_calls))
            if not math.isfinite(result.reward):
                raise EnvironmentFailed(f"environment returned reward {result.reward}")
            if result.done:
                episode.ended = "done"
                return
            if episode.turns >= self.max_turns:
                episode.ended = "turns"
                return
            observation = self.prompt_format.encode_observation(self.tokenizer, result.observation)
            if len(episode.output_ids) + len(observation) >= self.max_episode_tokens:
                episode.ended = "length"  # no room left for a policy token after it
                return
            episode.add_observation(observation, result.observation)

    async def evaluate(self, engine: Engine, sample: TaskSample, suite: str = "eval", k: int = 0) -> EvalRecord:
        """The greedy episode under the engine's current weights and, with ``k``, k episodes sampled from seeds
        of the sample's own; each scored by its environment (``suite`` is for single-turn rewards)."""
        greedy = dataclasses.replace(self.sampling, temperature=0.0, seed=None)
        episodes = [self.episode(engine, sample, greedy, lambda turn: None)]
        base = zlib.crc32(sample.id.encode()) & 0x7FFFFFFF
        episodes += [self.episode(engine, sample, self.sampling, turn_seed_of(base, i)) for i in range(k)]
        scored = [self._eval_sample(e) for e in await asyncio.gather(*episodes)]
        return EvalRecord(sample.id, sample.prompt_text, sample.reference, scored[0], tuple(scored[1:]))

    @staticmethod
    def _eval_sample(episode: Episode) -> EvalSample:
        outcome = RewardOutcome.failed("error", episode.failure) if episode.failure else RewardOutcome(episode.reward)
        return EvalSample("".join(episode.texts), outcome.value, outcome.status, outcome.detail,
                          tokens=len(episode.output_ids), finish_reason="length" if episode.ended == "length" else "")

    def close(self) -> None:
        self.envs.close()


def turn_seed_of(seed: int | None, episode: int):
    return lambda turn: turn_seed(seed, episode, turn)


def group_info(episodes: list[Episode]) -> dict:
    """Failures as reward failures (status "error"), the latency split of the slowest episode (engine vs
    environment), and the episodes' shape for the agent metrics."""
    failed = [e for e in episodes if e.failure]
    info: dict = {"reward_failures": {"error": len(failed)} if failed else {}}
    if failed:
        info["reward_failure_example"] = failed[0].failure
    slowest = max(episodes, key=lambda e: e.engine_seconds + e.env_seconds)
    info["engine_seconds"], info["reward_seconds"] = slowest.engine_seconds, slowest.env_seconds
    count = len(episodes)
    info["episode_stats"] = {
        "turns": sum(e.turns for e in episodes) / count,
        "tool_calls": sum(e.tool_calls for e in episodes) / count,
        "tool_call_validity": (sum(e.valid_tool_calls for e in episodes) / max(1, sum(e.tool_calls for e in episodes))),
        "env_share": sum(e.env_seconds for e in episodes) / max(1e-9, sum(e.env_seconds + e.engine_seconds
                                                                          for e in episodes)),
        "multi_version": sum(len(e.policy_versions) > 1 for e in episodes) / count,
        "done": sum(e.ended == "done" for e in episodes) / count,
    }
    return info
