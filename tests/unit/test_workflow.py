"""The single-turn workflow and the rollout worker on a scripted engine: rewards, failures, weights."""

import asyncio

import pytest

from rollouts.engines.base import SamplingConfig
from rollouts.rewards import score_safely
from rollouts.worker import RolloutWorker
from rollouts.workflow import SingleTurnWorkflow
from tests.fakes import CharTokenizer, FakeEngine, FakeTask


def make_worker(tmp_path, script, task=None):
    tok = CharTokenizer()
    task = task or FakeTask()
    workflow = SingleTurnWorkflow(task, tok, SamplingConfig(max_new_tokens=4), n=3, reward_timeout_s=1.0)
    return RolloutWorker(FakeEngine(script, tok.decode), workflow, task, tmp_path / "weights")


def test_group_carries_rewards_tokens_and_versions(tmp_path):
    worker = make_worker(tmp_path, {"q1=": ["1", "2", "1"]})
    group = asyncio.run(worker.run_group(FakeTask().train[1], submit_version=0))
    assert group.rewards == [1.0, 0.0, 1.0]
    assert group.trajectories[0].prompt_ids == tuple(ord(c) for c in "q1=")
    assert all(t.versions == (0,) for t in group.trajectories)
    assert group.submit_version == 0 and group.info["reward_failures"] == {}
    assert worker.stats()["generated_actions"] == 3


def test_reward_failures_are_recorded_not_raised(tmp_path):
    worker = make_worker(tmp_path, {"q0=": ["boom", "nan", "0"]}, FakeTask(raise_on="boom"))
    group = asyncio.run(worker.run_group(FakeTask().train[0], submit_version=2))
    assert group.rewards == [0.0, 0.0, 1.0]
    assert group.info["reward_failures"] == {"error": 1, "nonfinite": 1}
    assert "reward bug" in group.info["reward_failure_example"]


def test_hanging_reward_times_out():
    import time

    outcome = asyncio.run(score_safely(lambda: time.sleep(2) or 1.0, timeout_s=0.1))
    assert outcome.status == "timeout" and outcome.value == 0.0 and "reward_timeout_s" in outcome.detail


def test_load_weights_writes_files_and_bumps_the_engine_version(tmp_path):
    worker = make_worker(tmp_path, {"q0=": ["0"]})
    asyncio.run(worker.load_weights({"model.safetensors": b"abc", "config.json": b"{}"}, version=3))
    assert worker.engine.version == 3
    assert (tmp_path / "weights" / "v000003" / "model.safetensors").read_bytes() == b"abc"
    asyncio.run(worker.load_weights({"model.safetensors": b"def"}, version=4))
    assert [p.name for p in (tmp_path / "weights").iterdir()] == ["v000004"]


def test_load_weights_refuses_path_tricks(tmp_path):
    worker = make_worker(tmp_path, {"q0=": ["0"]})
    with pytest.raises(ValueError, match="refusing weight file name"):
        asyncio.run(worker.load_weights({"../evil": b"x"}, version=1))


def test_evaluate_is_greedy(tmp_path):
    worker = make_worker(tmp_path, {"e0=": ["0"]})
    assert asyncio.run(worker.evaluate(list(FakeTask().eval))) == [(1.0, "0")]
    assert worker.engine.calls[-1][1].temperature == 0.0


def test_length_tail_draws_long_tailed_minimum_lengths():
    workflow = SingleTurnWorkflow(FakeTask(), CharTokenizer(), SamplingConfig(max_new_tokens=200), n=2,
                                  reward_timeout_s=1.0, length_tail=(10, 1.0))
    lengths = sorted(workflow.sampling_for_group(seed).min_new_tokens for seed in range(2000))
    median, p99 = lengths[1000], lengths[1980]
    assert 8 <= median <= 12 and p99 > 5 * median and lengths[-1] <= 200
    plain = SingleTurnWorkflow(FakeTask(), CharTokenizer(), SamplingConfig(max_new_tokens=8), n=2,
                               reward_timeout_s=1.0)
    assert plain.sampling_for_group(7).min_new_tokens == 0


def test_a_group_is_sampled_from_its_seed_alone():
    workflow = SingleTurnWorkflow(FakeTask(), CharTokenizer(), SamplingConfig(max_new_tokens=200), n=2,
                                  reward_timeout_s=1.0, length_tail=(10, 1.0))
    first = [workflow.sampling_for_group(seed) for seed in (3, 4, 3)]
    assert first[0] == first[2] and first[0].seed == 3  # the same seed gives the same settings, in any order
    assert [workflow.sampling_for_group(seed) for seed in (3, 4)] == first[:2]
