"""Environment workers: Ray actors that host a rollout worker's environments, beside it on its node.

An environment's reset and steps run in its worker's threads (``env.concurrency`` at once), never in the
rollout worker's process, so a slow tool does not stall the engine's event loop and a crashing one takes only
its worker down. ``RayEnvironmentPool`` is what the multi-turn workflow sees: it opens each episode on the
worker with the fewest open episodes and waits on every call at most ``env.step_timeout_s``. A worker that
dies, or one whose step hangs past the timeout (a thread cannot be stopped), is killed and replaced; its
episodes fail with the reason, and new episodes go to the replacement.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from areal.config import TrainConfig
from rollouts.envs.base import StepResult
from rollouts.envs.pool import EnvironmentFailed, EnvironmentHost, EpisodeStart, ThreadSlots
from rollouts.tasks.base import TaskSample

log = logging.getLogger(__name__)


@ray.remote(max_restarts=0)
class EnvironmentWorker:
    """One process of environments (``EnvironmentHost``)."""

    def __init__(self, cfg: TrainConfig, model_path: str):
        from rollouts.envs.factory import environment_maker

        self.host = EnvironmentHost(environment_maker(cfg, model_path))

    def reset(self, episode: str, sample: TaskSample) -> EpisodeStart:
        return self.host.reset(episode, sample)

    def step(self, episode: str, action: str) -> StepResult:
        return self.host.step(episode, action)

    def close(self, episode: str) -> None:
        self.host.close(episode)

    def ready(self) -> bool:
        return True


class RayEnvironmentPool:
    """``env.workers`` environment workers for one rollout worker, on its node."""

    def __init__(self, cfg: TrainConfig, model_path: str, owner: str):
        self.cfg, self.model_path, self.owner = cfg, model_path, owner
        self.timeout_s = cfg.env.step_timeout_s
        self._ids = itertools.count()
        self.replaced = 0
        self.workers = [self._start() for _ in range(cfg.env.workers)]
        self.open_episodes = {id(w): 0 for w in self.workers}
        self.slots = {id(w): ThreadSlots(cfg.env.concurrency) for w in self.workers}  # each worker's free threads
        # a worker that cannot start (its environment does not build) fails the rollout worker's start, named
        ray.get([w.ready.remote() for w in self.workers], timeout=cfg.rollout.start_timeout_s)

    def _start(self):
        here = ray.get_runtime_context().get_node_id()
        return EnvironmentWorker.options(
            num_cpus=self.cfg.env.num_cpus, max_concurrency=self.cfg.env.concurrency,
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True),
        ).remote(self.cfg, self.model_path)

    def _replace(self, worker, why: str) -> None:
        if worker not in self.workers:
            return  # another episode already replaced it
        log.warning("%s: environment worker replaced: %s", self.owner, why)
        ray.kill(worker, no_restart=True)
        fresh = self._start()
        self.workers[self.workers.index(worker)] = fresh
        self.open_episodes.pop(id(worker), None)
        self.open_episodes[id(fresh)] = 0
        self.slots[id(fresh)] = ThreadSlots(self.cfg.env.concurrency)
        self.replaced += 1

    async def call(self, worker, what: str, method: str, *args):
        """``method`` on ``worker`` once one of its threads is free, under ``env.step_timeout_s`` from then: the
        timeout measures the environment's work, not the wait behind other episodes' steps."""
        slots = self.slots[id(worker)]
        await slots.acquire()
        try:
            if worker not in self.workers:
                raise EnvironmentFailed("its environment worker was replaced after another episode's failure")
            return await self._timed(worker, what, method, *args)
        finally:
            slots.release()

    async def _timed(self, worker, what: str, method: str, *args):
        try:
            return await asyncio.wait_for(getattr(worker, method).remote(*args), self.timeout_s)
        except asyncio.TimeoutError:
            self._replace(worker, f"{what} took over {self.timeout_s:g} s")
            raise EnvironmentFailed(f"environment {what} timed out after {self.timeout_s:g} s (env.step_timeout_s); "
                                    "its worker was replaced") from None
        except ray.exceptions.RayActorError as exc:
            self._replace(worker, f"it died during {what}")
            raise EnvironmentFailed(f"environment worker died during {what}: {str(exc).splitlines()[0]}") from None
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if exc.cause is not None else exc
            raise EnvironmentFailed(f"environment {what} failed: {type(cause).__name__}: {cause}") from None

    async def open(self, sample: TaskSample):
        worker = min(self.workers, key=lambda w: self.open_episodes.get(id(w), 0))
        episode = f"{self.owner}-{next(self._ids)}"
        self.open_episodes[id(worker)] += 1
        try:
            start = await self.call(worker, "reset", "reset", episode, sample)
        except BaseException:
            self._closed(worker)
            raise
        return _RayEpisode(self, worker, episode, start)

    def _closed(self, worker) -> None:
        if id(worker) in self.open_episodes:
            self.open_episodes[id(worker)] -= 1

    def close(self) -> None:
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.workers = []


class _RayEpisode:
    def __init__(self, pool: RayEnvironmentPool, worker, episode: str, start: EpisodeStart):
        self.pool, self.worker, self.episode, self.start = pool, worker, episode, start

    async def step(self, action: str) -> StepResult:
        if self.worker not in self.pool.workers:
            raise EnvironmentFailed("its environment worker was replaced after another episode's failure")
        return await self.pool.call(self.worker, "step", "step", self.episode, action)

    async def close(self) -> None:
        self.pool._closed(self.worker)
        if self.worker in self.pool.workers:
            self.worker.close.remote(self.episode)  # fire and forget: nothing waits on an episode's cleanup
