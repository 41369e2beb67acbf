"""Rewards in processes that can be stopped (DESIGN.md: reward code runs apart from inference).

A reward is user code: it can hang (sympy on a pathological expression), allocate without bound or crash.
A thread cannot be stopped, so a hung reward in a thread holds its slot for good; on the event loop's default
executor it would also stall the engine work queued behind it. Here every call runs in one of ``workers``
persistent processes, each started once and scoring many calls:

- started with ``spawn``: forking a process that runs threads (a Ray actor with an engine) is unsafe;
- each under an address-space limit (``RLIMIT_AS``, ``task.reward_memory_mb``);
- an output scored past ``timeout_s`` (``task.reward_timeout_s``, counted from when its process is sent it, or
  for the later outputs of one message from the previous outcome) kills that process, which is replaced, and
  the rest of the message goes to the replacement; a process that dies is replaced too;
- calls wait on their process from the pool's own threads (one per process), never from the default executor,
  so ``asyncio.to_thread`` work (engines, weight loads) never queues behind a reward.

Every call returns a ``RewardOutcome``: a score, or a failure (timeout, memory, error, nonfinite) that is
never a score. A scorer that cannot be sent to a process, or that fails to load there, raises at construction.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import queue
import resource
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from rollouts.rewards import RewardOutcome, outcome_of

Scorer = Callable[[Any, Any], float]  # (output, sample) -> reward, e.g. a task's bound ``score`` method
PARENT_CHECK_S = 1.0  # how often a reward process checks that its pool's process is still alive


def address_space_mb() -> float:
    """This process's virtual address space in MB (what RLIMIT_AS limits)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _exit_with_parent(parent: int) -> None:
    # the pool's process can die without closing us (SIGKILL of an actor); a hung reward would then run on
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)


def _serve(conn, scorer: Scorer, memory_mb: int) -> None:
    """A reward process: score (output, sample) pairs, one at a time in its main thread, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the pool's process, which stops us
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = memory_mb * 2**20 if hard == resource.RLIM_INFINITY else min(memory_mb * 2**20, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn.send(address_space_mb())  # ready
    while True:
        try:
            outputs, sample = conn.recv()
        except EOFError:
            return
        for output in outputs:  # each outcome goes back as soon as it is known: timeouts stay per output
            try:
                outcome = outcome_of(scorer(output, sample))
            except MemoryError:
                outcome = RewardOutcome.failed("memory", f"reward ran out of memory (address space limited to "
                                                         f"task.reward_memory_mb={memory_mb})")
            except Exception as exc:  # a reward bug is recorded in the sample, not raised
                outcome = RewardOutcome.failed("error", f"{type(exc).__name__}: {exc}")
            conn.send(outcome)


class _RewardProcess:
    """One spawned reward process and the parent's end of its pipe."""

    def __init__(self, ctx, scorer: Scorer, memory_mb: int):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, scorer, memory_mb), name="reward-worker", daemon=True)
        try:
            self.process.start()  # pickles the scorer
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            self.conn.close()
            raise TypeError(f"the reward {scorer!r} cannot be sent to a reward process ({exc}): it must be "
                            "picklable, its class importable by module path") from exc
        finally:
            child.close()
        self.ready = False

    def wait_ready(self, timeout_s: float, memory_mb: int) -> None:
        """Wait until the process has loaded the scorer; raises RuntimeError naming why it did not."""
        if self.ready:
            return
        if not self.conn.poll(timeout_s):
            raise RuntimeError(f"reward process did not start within {timeout_s:.0f}s")
        try:
            used_mb = self.conn.recv()
        except EOFError:
            self.process.join(5)
            raise RuntimeError(f"reward process exited with code {self.process.exitcode} before it was ready; the "
                               "reward (task.score) must be importable in a fresh process (see its stderr)") from None
        if used_mb >= memory_mb:
            raise RuntimeError(f"task.reward_memory_mb={memory_mb} leaves no room: a reward process already uses "
                               f"{used_mb:.0f} MB of address space once started; raise it")
        self.ready = True

    def score(self, outputs: list, sample, timeout_s: float) -> list[RewardOutcome]:
        """Outcomes of ``outputs`` (all of one sample) in order, sent in one message. Each output has
        ``timeout_s``; past it the process is killed (then ``alive`` is False) and the outcomes stop there: the
        last one is that failure, and the outputs after it are the caller's to score elsewhere."""
        self.conn.send((outputs, sample))
        outcomes = []
        for _ in outputs:
            if not self.conn.poll(timeout_s):
                self.kill()
                outcomes.append(RewardOutcome.failed(
                    "timeout", f"reward took longer than {timeout_s}s (task.reward_timeout_s); its process was "
                               "killed and replaced"))
                break
            try:
                outcomes.append(self.conn.recv())
            except EOFError:
                self.process.join(5)
                outcomes.append(RewardOutcome.failed(
                    "error", f"reward process died during the call (exit code {self.process.exitcode}; negative: "
                             "killed by that signal)"))
                break
        return outcomes

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


class RewardPool:
    """Scores outputs with ``scorer(output, sample)`` in ``workers`` killable processes (see the module doc)."""

    def __init__(self, scorer: Scorer, workers: int, timeout_s: float, memory_mb: int,
                 start_timeout_s: float = 120.0):
        if workers < 1 or timeout_s <= 0 or memory_mb < 1:
            raise ValueError(f"RewardPool: need task.reward_workers >= 1, task.reward_timeout_s > 0 and "
                             f"task.reward_memory_mb >= 1, got {workers}, {timeout_s}, {memory_mb}")
        self.scorer, self.timeout_s, self.memory_mb = scorer, timeout_s, memory_mb
        self.start_timeout_s = start_timeout_s
        self.replaced = 0  # processes killed (timeout) or found dead, and started again
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._closed = False
        self._processes: list[_RewardProcess] = []
        self._idle: queue.SimpleQueue[_RewardProcess] = queue.SimpleQueue()
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="reward-pool")
        try:
            for _ in range(workers):
                self._processes.append(_RewardProcess(self._ctx, scorer, memory_mb))
            for process in self._processes:  # they start in parallel
                process.wait_ready(start_timeout_s, memory_mb)
        except Exception:
            self.close()
            raise
        for process in self._processes:
            self._idle.put(process)

    async def score(self, output, sample) -> RewardOutcome:
        """Score one output; waits for a free process (the timeout starts when one takes the call)."""
        (outcome,) = await self.score_many([output], sample)
        return outcome

    async def score_many(self, outputs: list, sample) -> list[RewardOutcome]:
        """Score several outputs of one sample (a group's completions), in order: split into one contiguous
        chunk per process, each chunk one round trip. Each output keeps its own timeout, and a failure of one
        (its process killed or dead) leaves the rest of its chunk to a fresh process. A message per chunk
        instead of one per completion: on the CPU demo the per-call round trips were most of the rewards' CPU."""
        if self._closed:
            raise RuntimeError("RewardPool.score: the pool is closed")
        outputs = list(outputs)
        size = -(-len(outputs) // len(self._processes)) or 1
        loop = asyncio.get_running_loop()
        chunks = await asyncio.gather(*(loop.run_in_executor(self._threads, self._score_all, outputs[i:i + size], sample)
                                        for i in range(0, len(outputs), size)))
        return [outcome for chunk in chunks for outcome in chunk]

    def _score_all(self, outputs: list, sample) -> list[RewardOutcome]:
        outcomes: list[RewardOutcome] = []
        while len(outcomes) < len(outputs):
            outcomes += self._score_in_one_process(outputs[len(outcomes):], sample)
        return outcomes

    def _score_in_one_process(self, outputs: list, sample) -> list[RewardOutcome]:
        process = self._idle.get()  # as many threads as processes: one is always free here
        if not process.alive:  # died while idle (killed from outside)
            process = self._replace(process)
        try:
            process.wait_ready(self.start_timeout_s, self.memory_mb)
            return process.score(outputs, sample, self.timeout_s)
        except RuntimeError as exc:  # a replacement that did not start
            process.kill()
            return [RewardOutcome.failed("error", str(exc))]
        finally:
            self._idle.put(process if process.alive else self._replace(process))

    def _replace(self, dead: _RewardProcess) -> _RewardProcess:
        with self._lock:
            if self._closed:
                return dead
            fresh = _RewardProcess(self._ctx, self.scorer, self.memory_mb)
            self._processes[self._processes.index(dead)] = fresh
            self.replaced += 1
            return fresh

    def close(self) -> None:
        """Kill every reward process (a call in progress returns an error outcome); idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            processes = list(self._processes)
        self._threads.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.process.kill()
            process.process.join()

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
