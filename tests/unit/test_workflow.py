"""The single-turn workflow and the rollout worker on a scripted engine: rewards, failures, weights.

Rewards run in spawned processes (rollouts.reward_pool); the pools here are shared per module where they
can be, since each starts its processes once.
"""

import asyncio
import math
import os
import threading
import time

import pytest

from rollouts.engines.base import SamplingConfig
from rollouts.reward_pool import RewardPool
from rollouts.rewards import RewardOutcome
from rollouts.worker import RolloutWorker
from rollouts.workflow import SingleTurnWorkflow
from tests.fakes import CharTokenizer, FakeEngine, FakeTask, HostileTask

SAMPLE = FakeTask().train[0]  # reference "0"


@pytest.fixture(scope="module")
def rewards():
    """FakeTask's reward ("boom" raises, "nan" is NaN, the reference scores 1)."""
    with RewardPool(FakeTask(raise_on="boom").score, workers=2, timeout_s=5.0, memory_mb=1024) as pool:
        yield pool


@pytest.fixture(scope="module")
def hostile():
    """A reward that hangs on "hang" and allocates 4 GB on "hog": 0.5 s deadline, 1 GB of address space."""
    with RewardPool(HostileTask().score, workers=2, timeout_s=0.5, memory_mb=1024) as pool:
        yield pool


def make_worker(tmp_path, script, rewards):
    tok = CharTokenizer()
    workflow = SingleTurnWorkflow(tok, SamplingConfig(max_new_tokens=4), n=3, rewards=rewards)
    return RolloutWorker(FakeEngine(script, tok.decode), workflow, tmp_path / "weights")


def test_group_carries_rewards_tokens_and_versions(tmp_path, rewards):
    worker = make_worker(tmp_path, {"q1=": ["1", "2", "1"]}, rewards)
    group = asyncio.run(worker.run_group(FakeTask().train[1], submit_version=0))
    assert group.rewards == [1.0, 0.0, 1.0]
    assert group.trajectories[0].prompt_ids == tuple(ord(c) for c in "q1=")
    assert all(t.versions == (0,) for t in group.trajectories)
    assert group.submit_version == 0 and group.info["reward_failures"] == {}
    assert worker.stats()["generated_actions"] == 3


def test_reward_failures_are_recorded_never_scored(tmp_path, rewards):
    worker = make_worker(tmp_path, {"q0=": ["boom", "nan", "0"]}, rewards)
    group = asyncio.run(worker.run_group(FakeTask().train[0], submit_version=2))
    assert group.reward_ok == [False, False, True] and group.rewards == [1.0]
    assert all(math.isnan(t.reward) for t in group.trajectories[:2])
    assert group.info["reward_failures"] == {"error": 1, "nonfinite": 1}
    assert "reward bug" in group.info["reward_failure_example"]


def test_a_hung_reward_is_killed_at_its_deadline_and_its_pool_goes_on(hostile):
    replaced = hostile.replaced
    start = time.perf_counter()
    outcome = asyncio.run(hostile.score("hang", SAMPLE))
    assert 0.5 <= time.perf_counter() - start < 3.0
    assert outcome.status == "timeout" and math.isnan(outcome.value) and "task.reward_timeout_s" in outcome.detail
    assert hostile.replaced == replaced + 1
    assert [asyncio.run(hostile.score(c, SAMPLE)) for c in ("0", "1")] == [RewardOutcome(1.0), RewardOutcome(0.0)]


def test_a_group_scored_in_chunks_keeps_order_and_a_hung_output_fails_alone(hostile):
    # two processes, chunks of 3: the hang is mid-chunk, so what follows it in that chunk goes to a fresh process
    replaced = hostile.replaced
    outputs = ["0", "hang", "1", "0", "1", "0"]
    outcomes = asyncio.run(hostile.score_many(outputs, SAMPLE))
    assert [o.status for o in outcomes] == ["ok", "timeout", "ok", "ok", "ok", "ok"]
    assert [o.value for o in outcomes if o.status == "ok"] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert hostile.replaced == replaced + 1


def test_a_reward_beyond_the_memory_limit_fails_as_memory_and_its_pool_goes_on(hostile):
    outcome = asyncio.run(hostile.score("hog", SAMPLE))
    assert outcome.status == "memory" and "task.reward_memory_mb=1024" in outcome.detail
    assert asyncio.run(hostile.score("0", SAMPLE)) == RewardOutcome(1.0)


def test_hung_rewards_do_not_delay_engine_threads():
    """More hung rewards than the default executor has threads: engine work (asyncio.to_thread, as the diffusion
    sampler's steps and weight loads) still starts at once."""
    default_threads = min(32, (os.cpu_count() or 1) + 4)

    async def engine_latency(pool) -> float:
        hung = [asyncio.ensure_future(pool.score("hang", SAMPLE)) for _ in range(default_threads + 2)]
        await asyncio.sleep(0.2)
        start = time.perf_counter()
        await asyncio.to_thread(threading.get_ident)
        latency = time.perf_counter() - start
        for call in hung:
            call.cancel()
        return latency

    with RewardPool(HostileTask().score, workers=2, timeout_s=30.0, memory_mb=1024) as pool:
        assert asyncio.run(engine_latency(pool)) < 0.5


def test_a_reward_that_cannot_go_to_a_process_is_refused_at_start():
    class Local(FakeTask):  # not importable by module path
        pass

    with pytest.raises(TypeError, match="picklable"):
        RewardPool(Local().score, workers=1, timeout_s=1.0, memory_mb=1024)


def test_evaluate_is_greedy(tmp_path, rewards):
    worker = make_worker(tmp_path, {"e0=": ["0"]}, rewards)
    [record] = asyncio.run(worker.evaluate(list(FakeTask().eval)))
    assert record.greedy.output == "0" and record.greedy.reward == 1.0 and record.samples == ()
    assert worker.engine.calls[-1][1].temperature == 0.0


def test_evaluate_with_k_adds_k_samples_drawn_from_a_seed_of_the_sample(tmp_path, rewards):
    worker = make_worker(tmp_path, {"e0=": ["0", "1", "0"]}, rewards)
    [first] = asyncio.run(worker.evaluate(list(FakeTask().eval), k=3))
    [again] = asyncio.run(worker.evaluate(list(FakeTask().eval), k=3))
    assert [s.reward for s in first.samples] == [1.0, 0.0, 1.0] and first.greedy.tokens == 1
    (_, greedy, _), (_, sampled, n) = worker.engine.calls[:2]
    assert greedy.temperature == 0.0 and sampled.temperature > 0 and n == 3
    assert sampled.seed is not None and sampled.seed == worker.engine.calls[3][1].seed  # same draw each time


def test_a_hung_held_out_reward_times_out_instead_of_raising(tmp_path, hostile):
    worker = make_worker(tmp_path, {"e0=": ["hang"]}, hostile)
    [record] = asyncio.run(worker.evaluate(list(FakeTask().eval)))
    g = record.greedy
    assert g.status == "timeout" and math.isnan(g.reward) and g.output == "hang"


def test_a_raising_held_out_reward_is_an_error_outcome(tmp_path, rewards):
    worker = make_worker(tmp_path, {"e0=": ["boom"]}, rewards)
    [record] = asyncio.run(worker.evaluate(list(FakeTask().eval)))
    g = record.greedy
    assert g.status == "error" and "reward bug" in g.detail and g.output == "boom"


def test_closing_the_worker_stops_its_reward_processes(tmp_path):
    pool = RewardPool(FakeTask().score, workers=1, timeout_s=5.0, memory_mb=1024)
    processes = [p.process for p in pool._processes]
    worker = make_worker(tmp_path, {"q0=": ["0"]}, pool)
    asyncio.run(worker.close())
    assert not any(p.is_alive() for p in processes)
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(pool.score("0", SAMPLE))


def test_load_weights_writes_files_and_bumps_the_engine_version(tmp_path, rewards):
    worker = make_worker(tmp_path, {"q0=": ["0"]}, rewards)
    asyncio.run(worker.load_weights({"model.safetensors": b"abc", "config.json": b"{}"}, version=3))
    assert worker.engine.version == 3
    assert (tmp_path / "weights" / "v000003" / "model.safetensors").read_bytes() == b"abc"
    asyncio.run(worker.load_weights({"model.safetensors": b"def"}, version=4))
    assert [p.name for p in (tmp_path / "weights").iterdir()] == ["v000004"]


def test_load_weights_refuses_path_tricks(tmp_path, rewards):
    worker = make_worker(tmp_path, {"q0=": ["0"]}, rewards)
    with pytest.raises(ValueError, match="refusing weight file name"):
        asyncio.run(worker.load_weights({"../evil": b"x"}, version=1))


def test_length_tail_draws_long_tailed_minimum_lengths(rewards):
    workflow = SingleTurnWorkflow(CharTokenizer(), SamplingConfig(max_new_tokens=200), n=2,
                                  rewards=rewards, length_tail=(10, 1.0))
    lengths = sorted(workflow.sampling_for_group(seed).forced_new_tokens for seed in range(2000))
    median, p99 = lengths[1000], lengths[1980]
    assert 8 <= median <= 12 and p99 > 5 * median and lengths[-1] <= 200
    plain = SingleTurnWorkflow(CharTokenizer(), SamplingConfig(max_new_tokens=8), n=2,
                               rewards=rewards)
    assert plain.sampling_for_group(7).forced_new_tokens == 0


def test_a_group_is_sampled_from_its_seed_alone(rewards):
    workflow = SingleTurnWorkflow(CharTokenizer(), SamplingConfig(max_new_tokens=200), n=2,
                                  rewards=rewards, length_tail=(10, 1.0))
    first = [workflow.sampling_for_group(seed) for seed in (3, 4, 3)]
    assert first[0] == first[2] and first[0].seed == 3  # the same seed gives the same settings, in any order
    assert [workflow.sampling_for_group(seed) for seed in (3, 4)] == first[:2]


def test_a_prompt_the_engine_would_refuse_fails_its_samples_with_the_reason_instead_of_raising(tmp_path, rewards):
    tok = CharTokenizer()
    workflow = SingleTurnWorkflow(tok, SamplingConfig(max_new_tokens=4), n=3, rewards=rewards, max_model_len=3)
    worker = RolloutWorker(FakeEngine({"q0=": ["0"]}, tok.decode), workflow, tmp_path / "weights")
    group = asyncio.run(worker.run_group(FakeTask().train[0], submit_version=1))  # "q0=" is 3 tokens
    assert group.reward_ok == [False] * 3 and group.info["prompt_too_long"] == 1
    assert "engine.max_model_len=3" in group.info["reward_failure_example"] and worker.engine.calls == []
    [record] = asyncio.run(worker.evaluate(list(FakeTask().eval), k=2))
    assert record.greedy.status == "error" and "engine.max_model_len=3" in record.greedy.detail
    assert len(record.samples) == 2 and worker.engine.calls == []
