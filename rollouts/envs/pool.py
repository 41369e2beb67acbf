"""Where a multi-turn episode's environment lives, as the workflow sees it: open one per episode, step it, close it.

Environments run user code (tools, sandboxes, parsers) that can be slow, hang or crash, so the workflow only
ever awaits them with a timeout and never runs them on the engine's event loop. ``EnvironmentHost`` is the
plain object that holds the instances of one process (an environment worker, ``actors/env_worker.py``, or this
process for tests); ``LocalEnvironmentPool`` runs one in threads here. Every failure of an environment, its
timeout or its process reaches the workflow as ``EnvironmentFailed``, whose message is the episode's reason.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Protocol

from rollouts.envs.base import Environment, StepResult
from rollouts.tasks.base import TaskSample

MakeEnvironment = Callable[[], Environment]


class EnvironmentFailed(RuntimeError):
    """An environment's reset or step raised, timed out, or its process died: the episode fails with this reason."""


@dataclass(frozen=True)
class EpisodeStart:
    """What ``reset`` gave: the first prompt's text and the strings that end a policy turn."""

    prompt: str
    stop: tuple[str, ...]


class EpisodeEnvironment(Protocol):
    """One episode's environment, wherever it runs."""

    start: EpisodeStart

    async def step(self, action: str) -> StepResult:
        ...

    async def close(self) -> None:
        ...


class EnvironmentPool(Protocol):
    async def open(self, sample: TaskSample) -> EpisodeEnvironment:
        """A fresh environment reset to ``sample``; raises ``EnvironmentFailed``."""

    def close(self) -> None:
        """Stop the environments' processes."""


class EnvironmentHost:
    """The environment instances of one process, by episode id (the methods an environment worker serves)."""

    def __init__(self, make_env: MakeEnvironment):
        self.make_env = make_env
        self.episodes: dict[str, Environment] = {}

    def reset(self, episode: str, sample: TaskSample) -> EpisodeStart:
        env = self.make_env()
        try:
            prompt = env.reset(sample)
        except BaseException:
            _close_quietly(env)
            raise
        self.episodes[episode] = env
        return EpisodeStart(str(prompt), tuple(env.stop))

    def step(self, episode: str, action: str) -> StepResult:
        env = self.episodes.get(episode)
        if env is None:
            raise KeyError(f"no open environment for episode {episode} in process {os.getpid()}")
        result = env.step(action)
        if not isinstance(result, StepResult):
            raise TypeError(f"{type(env).__name__}.step returned {type(result).__name__}, expected a StepResult")
        return result

    def close(self, episode: str) -> None:
        env = self.episodes.pop(episode, None)
        if env is not None:
            _close_quietly(env)

    def open_episodes(self) -> int:
        return len(self.episodes)


def _close_quietly(env: Environment) -> None:
    # a close that raises must not turn an episode's real outcome into a failure
    try:
        env.close()
    except Exception:  # noqa: BLE001 (an environment's own cleanup; nothing to do about it here)
        pass


class ThreadSlots:
    """The free threads of one environment host, as the caller counts them: a call waits for a slot *before* its
    timeout starts, so ``env.step_timeout_s`` times an environment's own work and never the queue behind other
    episodes (with more open episodes than threads, healthy slow steps were timing out).

    The count of busy threads is the truth (a thread that outlives its call, timed out, stays busy); the asyncio
    semaphore that callers wait on is rebuilt from it for each event loop, and a slot goes back to whichever
    loop is current when its thread ends.
    """

    def __init__(self, threads: int):
        self.threads = threads
        self._busy, self._lock = 0, threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._free: asyncio.Semaphore | None = None

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a semaphore belongs to one event loop
            with self._lock:
                self._loop, self._free = loop, asyncio.Semaphore(max(0, self.threads - self._busy))
        return self._free

    async def acquire(self) -> None:
        await self._semaphore().acquire()
        with self._lock:
            self._busy += 1

    def release(self) -> None:
        """A thread is free again; callable from any thread."""
        with self._lock:
            self._busy -= 1
            loop, free = self._loop, self._free
        try:
            loop.call_soon_threadsafe(free.release)
        except RuntimeError:
            pass  # that loop is closed: the next one's semaphore starts from the busy count


class LocalEnvironmentPool:
    """Environments in threads of this process, each call under ``step_timeout_s``. For tests and debugging: a
    hung environment keeps its thread (threads cannot be stopped); environment workers are replaced instead."""

    def __init__(self, make_env: MakeEnvironment, step_timeout_s: float = 30.0, threads: int = 8):
        self.host = EnvironmentHost(make_env)
        self.timeout_s = step_timeout_s
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="environment")
        self._slots = ThreadSlots(threads)
        self._ids = itertools.count()

    async def _call(self, what: str, fn, *args):
        await self._slots.acquire()
        future = asyncio.get_running_loop().run_in_executor(self._threads, self._in_slot, fn, *args)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except asyncio.TimeoutError:
            raise EnvironmentFailed(f"environment {what} timed out after {self.timeout_s:g} s "
                                    "(env.step_timeout_s)") from None
        except Exception as exc:
            raise EnvironmentFailed(f"environment {what} failed: {type(exc).__name__}: {exc}") from exc

    def _in_slot(self, fn, *args):
        try:
            return fn(*args)
        finally:  # the slot comes back when the thread does: a timed-out call's thread is still busy
            self._slots.release()

    async def open(self, sample: TaskSample) -> EpisodeEnvironment:
        episode = f"local-{next(self._ids)}"
        start = await self._call("reset", self.host.reset, episode, sample)
        return _LocalEpisode(self, episode, start)

    def close(self) -> None:
        for episode in list(self.host.episodes):
            self.host.close(episode)
        self._threads.shutdown(wait=False, cancel_futures=True)


class _LocalEpisode:
    def __init__(self, pool: LocalEnvironmentPool, episode: str, start: EpisodeStart):
        self.pool, self.episode, self.start = pool, episode, start

    async def step(self, action: str) -> StepResult:
        return await self.pool._call("step", self.pool.host.step, self.episode, action)

    async def close(self) -> None:
        self.pool.host.close(self.episode)
