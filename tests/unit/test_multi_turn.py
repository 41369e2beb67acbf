"""The multi-turn workflow on a scripted engine and in-process environments: turns, observations as context,
token budgets, failures, and a learner that never trains on what the environment wrote."""

import asyncio
import math
import threading

import pytest
import torch

from areal.algos import decoupled_ppo_loss
from areal.batching import build_train_batch
from rollouts.engines.base import SamplingConfig
from rollouts.envs.base import Environment, StepResult
from rollouts.envs.pool import LocalEnvironmentPool
from rollouts.multi_turn import MultiTurnWorkflow
from rollouts.tasks.base import TaskSample
from tests.fakes import CharTokenizer, FakeEngine

SAMPLE = TaskSample("s0", "6*7=", "42")
CALL, OBSERVATION, ANSWER = "[6*7]", "=42\n", "42"


class Calculatorish(Environment):
    """Answers "[...]" turns with "=42\\n"; any other turn is the final answer, scored against the reference."""

    stop = ("]",)

    def reset(self, sample):
        self.sample = sample
        return sample.prompt

    def step(self, action):
        if action.endswith("]"):
            return StepResult(OBSERVATION, info={"tool_calls": 1, "valid_tool_calls": 1})
        return StepResult(reward=float(action == self.sample.reference), done=True)


class Raising(Calculatorish):
    def step(self, action):
        raise RuntimeError("tool crashed")


class Hanging(Calculatorish):
    released = threading.Event()

    def step(self, action):
        self.released.wait(5)
        return StepResult(done=True)


class TakingTurnsEngine(FakeEngine):
    """Each request for a prompt gets that prompt's next scripted completion (episodes differ)."""

    def __init__(self, script, decode):
        super().__init__(script, decode)
        self.served: dict[str, int] = {}

    async def generate(self, prompt_ids, sampling, n=1):
        text = self.decode(prompt_ids)
        k = self.served.get(text, 0)
        self.served[text] = k + 1
        texts = self.script[text]
        self.script = {**self.script, text: texts[k % len(texts):] + texts[:k % len(texts)]}
        try:
            return await super().generate(prompt_ids, sampling, n)
        finally:
            self.script = {**self.script, text: texts}


class VersionBumpingEngine(FakeEngine):
    """A new policy version lands after every request (as if the learner published between turns)."""

    async def generate(self, prompt_ids, sampling, n=1):
        out = await super().generate(prompt_ids, sampling, n)
        self._version += 1
        return out


def run(workflow, engine, sample=SAMPLE, seed=0):
    async def go():
        return await workflow.run(engine, sample, submit_version=0, seed=seed)

    return asyncio.run(go())


def make(env_cls=Calculatorish, n=2, max_turns=4, max_episode_tokens=64, timeout_s=5.0, max_new_tokens=8,
         max_model_len=0):
    pool = LocalEnvironmentPool(env_cls, step_timeout_s=timeout_s)
    return MultiTurnWorkflow(CharTokenizer(), SamplingConfig(max_new_tokens=max_new_tokens), n, pool, max_turns,
                             max_episode_tokens, max_model_len=max_model_len)


SCRIPT = {"6*7=": [CALL], "6*7=" + CALL + OBSERVATION: [ANSWER]}


def test_a_tool_call_then_an_answer_is_one_trajectory_whose_observation_is_context_not_action():
    workflow, engine = make(), FakeEngine(SCRIPT, CharTokenizer().decode)
    group = run(workflow, engine)
    assert len(group.trajectories) == 2
    t = group.trajectories[0]
    assert t.reward == 1.0 and t.finish_reason == "done" and t.text == CALL + OBSERVATION + ANSWER
    assert CharTokenizer().decode(t.output_ids) == CALL + OBSERVATION + ANSWER
    assert t.policy_mask == (True,) * len(CALL) + (False,) * len(OBSERVATION) + (True,) * len(ANSWER)
    assert t.num_actions == len(CALL) + len(ANSWER)
    observed = [lp for lp, m in zip(t.logprobs, t.policy_mask) if not m]
    assert observed == [0.0] * len(OBSERVATION)
    stats = group.info["episode_stats"]
    assert stats["turns"] == 2 and stats["tool_calls"] == 1 and stats["done"] == 1.0


def test_each_turn_stops_at_the_environments_stop_strings_and_continues_from_the_whole_transcript_ids():
    workflow, engine = make(n=1), FakeEngine(SCRIPT, CharTokenizer().decode)
    run(workflow, engine)
    (first_ids, first, _), (second_ids, second, _) = engine.calls
    assert first.stop == ("]",) and second.stop == ("]",)
    assert second_ids == CharTokenizer().encode("6*7=" + CALL + OBSERVATION)  # ids appended, nothing re-tokenised
    assert first.seed != second.seed  # each turn draws its own seed from the group's


def test_turn_seeds_come_from_the_group_seed_alone():
    engines = [FakeEngine(SCRIPT, CharTokenizer().decode) for _ in range(2)]
    for engine in engines:
        run(make(n=2), engine, seed=11)
    # the episodes' turns interleave in whichever order their environment steps finish: compare the seeds drawn
    assert sorted(c[1].seed for c in engines[0].calls) == sorted(c[1].seed for c in engines[1].calls)


def test_observation_tokens_carry_the_version_of_the_turn_before_and_version_spans_are_counted():
    workflow, engine = make(n=1), VersionBumpingEngine(SCRIPT, CharTokenizer().decode)
    t = run(workflow, engine).trajectories[0]
    assert t.versions == (0,) * len(CALL) + (0,) * len(OBSERVATION) + (1,) * len(ANSWER)
    assert run(make(n=1), VersionBumpingEngine(SCRIPT, CharTokenizer().decode)).info["episode_stats"][
        "multi_version"] == 1.0


def test_an_episode_that_never_answers_ends_at_the_turn_limit_with_no_reward():
    loop_script = {"6*7=" + (CALL + OBSERVATION) * k: [CALL] for k in range(5)}
    t = run(make(n=1, max_turns=2), FakeEngine(loop_script, CharTokenizer().decode)).trajectories[0]
    assert t.finish_reason == "turns" and t.reward == 0.0 and sum(t.policy_mask) == 2 * len(CALL)


def test_the_token_budget_bounds_turns_and_observations_together():
    engine = FakeEngine(SCRIPT, CharTokenizer().decode)
    t = run(make(n=1, max_episode_tokens=len(CALL) + len(OBSERVATION)), engine).trajectories[0]
    assert t.finish_reason == "length" and t.output_ids == tuple(CharTokenizer().encode(CALL))
    engine = FakeEngine(SCRIPT, CharTokenizer().decode)
    run(make(n=1, max_episode_tokens=len(CALL) + len(OBSERVATION) + 1), engine)
    assert engine.calls[1][1].max_new_tokens == 1  # the last turn gets what is left


def test_the_engine_length_bounds_the_transcript_with_its_prompt_and_ends_it_as_length():
    engine = FakeEngine(SCRIPT, CharTokenizer().decode)
    # room for the prompt and the call, not for the observation's answer turn: the episode ends, no exception
    fits = len(SAMPLE.prompt) + len(CALL) + len(OBSERVATION)
    t = run(make(n=1, max_model_len=fits), engine).trajectories[0]
    assert t.finish_reason == "length" and t.output_ids == tuple(CharTokenizer().encode(CALL + OBSERVATION))
    assert all(len(ids) < fits for ids, _, _ in engine.calls)


def test_a_prompt_the_engine_would_refuse_fails_the_episode_with_the_reason():
    engine = FakeEngine(SCRIPT, CharTokenizer().decode)
    group = run(make(n=2, max_model_len=len(SAMPLE.prompt)), engine)
    assert engine.calls == [] and all(math.isnan(t.reward) for t in group.trajectories)
    assert "engine.max_model_len" in group.info["reward_failure_example"]


@pytest.mark.parametrize("env_cls, reason", [(Raising, "tool crashed"), (Hanging, "timed out")])
def test_an_environment_that_fails_or_hangs_fails_its_episode_with_the_reason_and_no_score(env_cls, reason):
    workflow = make(env_cls, n=2, timeout_s=0.3)
    Hanging.released.clear()
    try:
        group = run(workflow, FakeEngine(SCRIPT, CharTokenizer().decode))
    finally:
        Hanging.released.set()
        workflow.close()
    assert all(math.isnan(t.reward) and t.finish_reason == "failed" for t in group.trajectories)
    assert group.info["reward_failures"] == {"error": 2} and reason in group.info["reward_failure_example"]


def test_greedy_evaluation_plays_one_episode_and_scores_its_answer():
    record = asyncio.run(make().evaluate(FakeEngine(SCRIPT, CharTokenizer().decode), SAMPLE))
    assert record.greedy.ok and record.greedy.reward == 1.0 and record.greedy.output == CALL + OBSERVATION + ANSWER
    assert record.samples == ()


def test_evaluation_with_k_plays_k_more_episodes_from_the_samples_own_seeds():
    engine = FakeEngine(SCRIPT, CharTokenizer().decode)
    record = asyncio.run(make().evaluate(engine, SAMPLE, k=2))
    assert len(record.samples) == 2 and all(s.reward == 1.0 for s in record.samples)
    seeds = [sampling.seed for _, sampling, _ in engine.calls if sampling.temperature > 0]
    assert len(seeds) == 4 and None not in seeds  # two turns each


def test_the_learner_gets_no_gradient_from_tokens_the_environment_wrote():
    group = run(make(n=2), TakingTurnsEngine({"6*7=": [CALL], "6*7=" + CALL + OBSERVATION: [ANSWER, "41"]},
                                             CharTokenizer().decode))
    assert sorted(t.reward for t in group.trajectories) == [0.0, 1.0]
    batch = build_train_batch([group], "grpo", pad_id=0)
    t, prompt = group.trajectories[0], len(SAMPLE.prompt)
    observed = [prompt + i for i, m in enumerate(t.policy_mask) if not m]
    assert not batch.loss_mask[0, observed].any() and batch.loss_mask[0, prompt:prompt + len(CALL)].all()
    logits = torch.randn(*batch.input_ids.shape, 128, requires_grad=True)
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    logp = torch.nn.functional.pad(logp, (1, 0))  # token j's log-prob at column j
    loss, _ = decoupled_ppo_loss(logp, logp.detach(), batch.behavior_logprobs, batch.advantages, batch.loss_mask)
    loss.backward()
    predictors = [j - 1 for j in observed]  # column j-1 predicts token j
    assert torch.all(logits.grad[:, predictors] == 0)
    assert logits.grad[0, prompt - 1:prompt + len(CALL) - 1].abs().sum() > 0
