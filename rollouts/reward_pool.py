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

What the processes run is a set of reward suites (``rollouts.rewards.suite``), keyed by name (training, and
each held-out set with rewards of its own), resolved once per process. A group is scored component by
component: the per-sample ones together, one message per chunk of completions (each completion under its own
timeout); each batched one (TRL-style functions, the http server) in one message for the whole group, under one
timeout. The parent combines the components' results with their weights.

Every call returns a ``RewardOutcome``: a score, or a failure (timeout, memory, error, nonfinite) that is
never a score. A suite that cannot be sent to a process, or that fails to load there, raises at construction.
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

from rollouts.rewards import RewardOutcome
from rollouts.rewards.base import RewardState
from rollouts.rewards.suite import RewardSuite, combine

Scorer = Callable[[Any, Any], float]  # (output, sample) -> reward, e.g. a task's bound ``score`` method
Suites = dict[str, RewardSuite]
PARENT_CHECK_S = 1.0  # how often a reward process checks that its pool's process is still alive
DEFAULT_SUITE = "train"


def as_suites(scorer: RewardSuite | Suites | Scorer) -> Suites:
    """Suites by name from a mapping, or one suite (or a plain per-sample scorer, ``(output, sample) -> float``)
    for training and evaluation alike."""
    if isinstance(scorer, dict):
        return dict(scorer)
    suite = scorer if isinstance(scorer, RewardSuite) else RewardSuite.of_scorer(scorer, "reward")
    return {DEFAULT_SUITE: suite, "eval": suite}


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


def _serve(conn, suites: Suites, memory_mb: int) -> None:
    """A reward process: run the components it is sent, one call at a time in its main thread, until the pipe
    closes. Per-sample components stream one result list per output (timeouts stay per output)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the pool's process, which stops us
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = memory_mb * 2**20 if hard == resource.RLIM_INFINITY else min(memory_mb * 2**20, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        loaded = {key: suite.load() for key, suite in suites.items()}
    except Exception as exc:  # an entry that does not resolve here: the pool's constructor reports it
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", address_space_mb()))
    note = f"reward ran out of memory (address space limited to task.reward_memory_mb={memory_mb})"

    def limited(value):
        return RewardOutcome.failed("memory", note) if value is not None and value.status == "memory" else value

    while True:
        try:
            key, indices, outputs, sample, state = conn.recv()
        except EOFError:
            return
        components = [loaded[key][i] for i in indices]
        if components[0].batched:
            values, metrics = components[0].score(outputs, sample, state)
            conn.send(([limited(v) for v in values], metrics))
            continue
        for output in outputs:  # each output's results go back as soon as they are known
            conn.send([limited(c.score(output, sample)) for c in components])


class _RewardProcess:
    """One spawned reward process and the parent's end of its pipe."""

    def __init__(self, ctx, suites: Suites, memory_mb: int):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, suites, memory_mb), name="reward-worker", daemon=True)
        try:
            self.process.start()  # pickles the suites
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            self.conn.close()
            raise TypeError(f"the rewards {suites!r} cannot be sent to a reward process ({exc}): they must be "
                            "picklable, their classes importable by module path") from exc
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
            state, detail = self.conn.recv()
        except EOFError:
            self.process.join(5)
            raise RuntimeError(f"reward process exited with code {self.process.exitcode} before it was ready; the "
                               "rewards must be importable in a fresh process (see its stderr)") from None
        if state == "failed":
            raise RuntimeError(f"a reward process could not load the rewards: {detail}")
        used_mb = detail
        if used_mb >= memory_mb:
            raise RuntimeError(f"task.reward_memory_mb={memory_mb} leaves no room: a reward process already uses "
                               f"{used_mb:.0f} MB of address space once started; raise it")
        self.ready = True

    def score(self, call: tuple, n: int, timeout_s: float) -> list[list]:
        """Per-sample components' results for the ``n`` outputs of ``call`` (one list per output, one entry per
        component), in order, sent in one message. Each output has ``timeout_s``; past it the process is killed
        (then ``alive`` is False) and the results stop there: the last one is that failure, and the outputs
        after it are the caller's to score elsewhere."""
        self.conn.send(call)
        results = []
        for _ in range(n):
            failure = self._receive(timeout_s)
            if isinstance(failure, RewardOutcome):
                results.append([failure] * len(call[1]))
                break
            results.append(failure)
        return results

    def score_batch(self, call: tuple, n: int, timeout_s: float) -> tuple[list, dict]:
        """A batched component's (results for the ``n`` outputs, logged metrics), under one timeout."""
        self.conn.send(call)
        received = self._receive(timeout_s)
        if isinstance(received, RewardOutcome):
            return [received] * n, {}
        return received

    def _receive(self, timeout_s: float):
        """The next message, or the failure that ended the wait (the process killed at the deadline, or dead)."""
        if not self.conn.poll(timeout_s):
            self.kill()
            return RewardOutcome.failed("timeout", f"reward took longer than {timeout_s}s (task.reward_timeout_s); "
                                                   "its process was killed and replaced")
        try:
            return self.conn.recv()
        except EOFError:
            self.process.join(5)
            return RewardOutcome.failed("error", f"reward process died during the call (exit code "
                                                 f"{self.process.exitcode}; negative: killed by that signal)")

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


class RewardPool:
    """Scores outputs with reward suites (or one ``scorer(output, sample)``) in ``workers`` killable processes
    (see the module doc)."""

    def __init__(self, scorer: RewardSuite | Suites | Scorer, workers: int, timeout_s: float, memory_mb: int,
                 start_timeout_s: float = 120.0):
        if workers < 1 or timeout_s <= 0 or memory_mb < 1:
            raise ValueError(f"RewardPool: need task.reward_workers >= 1, task.reward_timeout_s > 0 and "
                             f"task.reward_memory_mb >= 1, got {workers}, {timeout_s}, {memory_mb}")
        self.suites, self.timeout_s, self.memory_mb = as_suites(scorer), timeout_s, memory_mb
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
                self._processes.append(_RewardProcess(self._ctx, self.suites, memory_mb))
            for process in self._processes:  # they start in parallel
                process.wait_ready(start_timeout_s, memory_mb)
        except Exception:
            self.close()
            raise
        for process in self._processes:
            self._idle.put(process)

    async def score(self, output, sample, suite: str = DEFAULT_SUITE) -> RewardOutcome:
        """Score one output; waits for a free process (the timeout starts when one takes the call)."""
        (outcome,) = await self.score_many([output], sample, suite)
        return outcome

    async def score_many(self, outputs: list, sample, suite: str = DEFAULT_SUITE,
                         state: RewardState | None = None) -> list[RewardOutcome]:
        """Score several outputs of one sample (a group's completions), in order."""
        return (await self.score_group(outputs, sample, suite, state))[0]

    async def score_group(self, outputs: list, sample, suite: str = DEFAULT_SUITE,
                          state: RewardState | None = None) -> tuple[list[RewardOutcome], dict[str, list[float]]]:
        """(one combined outcome per output, metrics the rewards logged) for a group's outputs under ``suite``.

        The per-sample components run together, split into one contiguous chunk per process, each chunk one
        round trip; each output keeps its own timeout, and a failure of one (its process killed or dead) leaves
        the rest of its chunk to a fresh process. A message per chunk instead of one per completion: on the CPU
        demo the per-call round trips were most of the rewards' CPU. Each batched component is one call."""
        if self._closed:
            raise RuntimeError("RewardPool.score: the pool is closed")
        rewards = self.suites[suite]
        outputs, state = list(outputs), state or RewardState()
        loop = asyncio.get_running_loop()
        per_sample = [i for i, spec in enumerate(rewards.specs) if not spec.batched]
        columns: dict[int, list] = {}  # component index -> its result per output
        metrics: dict[str, list[float]] = {}
        if per_sample:
            size = -(-len(outputs) // len(self._processes)) or 1
            chunks = await asyncio.gather(*(
                loop.run_in_executor(self._threads, self._score_all, (suite, per_sample, outputs[i:i + size], sample,
                                                                      state)) for i in range(0, len(outputs), size)))
            rows = [row for chunk in chunks for row in chunk]
            for j, index in enumerate(per_sample):
                columns[index] = [row[j] for row in rows]
        for index, spec in enumerate(rewards.specs):
            if spec.batched:
                columns[index], logged = await loop.run_in_executor(
                    self._threads, self._in_one_process, "score_batch", (suite, [index], outputs, sample, state))
                for name, values in logged.items():
                    metrics.setdefault(name, []).extend(values)
        names, weights = rewards.names, rewards.weights
        return [combine(names, weights, [columns[i][k] for i in range(len(names))])
                for k in range(len(outputs))], metrics

    def _score_all(self, call: tuple) -> list[list]:
        key, indices, outputs, sample, state = call
        rows: list[list] = []
        while len(rows) < len(outputs):
            rows += self._in_one_process("score", (key, indices, outputs[len(rows):], sample, state))
        return rows

    def _in_one_process(self, method: str, call: tuple):
        process = self._idle.get()  # as many threads as processes: one is always free here
        if not process.alive:  # died while idle (killed from outside)
            process = self._replace(process)
        n = len(call[2])
        try:
            process.wait_ready(self.start_timeout_s, self.memory_mb)
            return getattr(process, method)(call, n, self.timeout_s)
        except RuntimeError as exc:  # a replacement that did not start
            process.kill()
            failed = RewardOutcome.failed("error", str(exc))
            return [[failed] * len(call[1])] if method == "score" else ([failed] * n, {})
        finally:
            self._idle.put(process if process.alive else self._replace(process))

    def _replace(self, dead: _RewardProcess) -> _RewardProcess:
        with self._lock:
            if self._closed:
                return dead
            fresh = _RewardProcess(self._ctx, self.suites, self.memory_mb)
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
