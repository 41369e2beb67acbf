"""Environments in threads of the rollout process: a step's timeout counts its own work, never the wait for a
free thread behind other episodes."""

import asyncio
import time

from rollouts.envs.base import Environment, StepResult
from rollouts.envs.pool import EnvironmentFailed, LocalEnvironmentPool
from rollouts.tasks.base import TaskSample

SAMPLE = TaskSample("s", "q", "a")


class Sleepy(Environment):
    """A healthy environment whose steps take ``seconds``."""

    seconds = 0.3

    def reset(self, sample):
        return sample.prompt

    def step(self, action):
        time.sleep(float(action))
        return StepResult("ok")


def run_episodes(pool, action: str, count: int):
    async def episode():
        env = await pool.open(SAMPLE)
        try:
            return (await env.step(action)).observation
        finally:
            await env.close()

    async def go():
        return await asyncio.gather(*(episode() for _ in range(count)), return_exceptions=True)

    return asyncio.run(go())


def test_healthy_steps_queued_behind_busy_threads_do_not_time_out():
    pool = LocalEnvironmentPool(Sleepy, step_timeout_s=1.0, threads=2)
    try:
        start = time.perf_counter()
        assert run_episodes(pool, "0.3", 8) == ["ok"] * 8  # 8 x 0.3 s on 2 threads: 1.2 s in all, 0.3 s each
        assert time.perf_counter() - start >= 1.1
    finally:
        pool.close()


def test_a_step_that_is_really_slow_still_times_out_and_its_thread_stays_counted_busy():
    pool = LocalEnvironmentPool(Sleepy, step_timeout_s=0.5, threads=1)
    try:
        [failure] = run_episodes(pool, "1.2", 1)
        assert isinstance(failure, EnvironmentFailed) and "timed out after 0.5 s" in str(failure)
        start = time.perf_counter()
        assert run_episodes(pool, "0.1", 1) == ["ok"]  # waited for the hung thread, then had its own 0.5 s
        assert time.perf_counter() - start >= 0.4
    finally:
        pool.close()
