"""Environment workers: episodes' environments run in Ray actors beside the rollout worker; a slow step does not
hold up others, and a worker that dies or hangs fails only its episodes, with the reason, and is replaced."""

import asyncio
import os
import time

import pytest

from rollouts.envs.base import Environment, StepResult
from rollouts.envs.pool import EnvironmentFailed
from rollouts.tasks.base import TaskSample

SAMPLE = TaskSample("s", "1+1=", "2")


class Scripted(Environment):
    """Does what the action says: "pid" answers with the worker's pid, "die" kills the process, "slow"/"hang"
    sleep, anything else is a final answer."""

    stop = ("]",)

    def __init__(self, task):
        self.task = task

    def reset(self, sample):
        return sample.prompt

    def step(self, action):
        if action == "pid":
            return StepResult(str(os.getpid()))
        if action == "die":
            os._exit(1)
        if action == "slow":
            time.sleep(1.5)
            return StepResult("slept")
        if action == "brief":
            time.sleep(0.3)
            return StepResult("done briefly")
        if action == "hang":
            time.sleep(60)
        return StepResult(reward=float(action == "2"), done=True)


@pytest.fixture(scope="module")
def pool(ray_session):
    from actors.env_worker import RayEnvironmentPool
    from launch.config_loader import load_config

    cfg, _ = load_config(["env.type=custom", f"env.factory={__name__}:Scripted", "env.step_timeout_s=5",
                          "env.workers=1"])
    pool = RayEnvironmentPool(cfg, "", owner="test")
    yield pool
    pool.close()


def play(pool, *actions):
    async def go():
        env = await pool.open(SAMPLE)
        try:
            return [await env.step(a) for a in actions]
        finally:
            await env.close()

    return asyncio.run(go())


def test_an_episode_s_environment_runs_in_a_worker_process_and_answers_its_steps(pool):
    (pid, answer) = play(pool, "pid", "2")
    assert int(pid.observation) != os.getpid()
    assert answer.done and answer.reward == 1.0


def test_a_slow_step_does_not_hold_up_another_episode_on_the_same_worker(pool):
    async def go():
        slow_env, quick_env = await pool.open(SAMPLE), await pool.open(SAMPLE)
        slow = asyncio.create_task(slow_env.step("slow"))
        await asyncio.sleep(0.2)
        quick = await quick_env.step("2")
        pending = not slow.done()
        await slow
        await slow_env.close()
        await quick_env.close()
        return quick, pending

    quick, slow_was_pending = asyncio.run(go())
    assert quick.done and slow_was_pending


def test_a_worker_that_dies_fails_its_episode_with_the_reason_and_is_replaced(pool):
    before = pool.replaced
    with pytest.raises(EnvironmentFailed, match="died during step"):
        play(pool, "die")
    assert pool.replaced == before + 1
    assert play(pool, "2")[0].reward == 1.0  # the replacement serves new episodes


def test_a_step_past_the_timeout_fails_the_episode_and_replaces_its_worker(pool):
    before = pool.replaced
    with pytest.raises(EnvironmentFailed, match="timed out after 5 s"):
        play(pool, "hang")
    assert pool.replaced == before + 1
    assert play(pool, "2")[0].reward == 1.0


def test_healthy_steps_queued_behind_busy_threads_do_not_time_out(ray_session):
    """16 episodes at once on one worker of 2 threads, each step 0.3 s against a 1 s timeout: the steps wait
    for a free thread before their clock starts, so none times out and the worker is not replaced."""
    from actors.env_worker import RayEnvironmentPool
    from launch.config_loader import load_config

    cfg, _ = load_config(["env.type=custom", f"env.factory={__name__}:Scripted", "env.step_timeout_s=1",
                          "env.workers=1", "env.concurrency=2"])
    pool = RayEnvironmentPool(cfg, "", owner="queue-test")
    try:
        async def episode():
            env = await pool.open(SAMPLE)
            try:
                return (await env.step("brief")).observation
            finally:
                await env.close()

        async def go():
            return await asyncio.gather(*(episode() for _ in range(16)), return_exceptions=True)

        results = asyncio.run(go())
        assert results == ["done briefly"] * 16 and pool.replaced == 0
    finally:
        pool.close()
