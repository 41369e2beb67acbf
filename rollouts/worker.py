"""A rollout worker: one engine running many episodes at once, plus evaluation and weight loading.

Plain asyncio; ``actors/rollout_actor.py`` only decides which process it lives in.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from areal.timeline import BusyTracker
from areal.types import TrajectoryGroup
from rollouts.engines.base import Engine, SamplingConfig
from rollouts.tasks.base import Task, TaskSample
from rollouts.workflow import SingleTurnWorkflow


class RolloutWorker:
    """Runs workflows on one engine and tracks when that engine had work."""

    def __init__(self, engine: Engine, workflow: SingleTurnWorkflow, task: Task, weights_root: str | Path):
        self.engine, self.workflow, self.task = engine, workflow, task
        self.weights_root = Path(weights_root)
        self.weights_root.mkdir(parents=True, exist_ok=True)
        self.busy = BusyTracker()
        self.generated_tokens = 0
        self._update_lock = asyncio.Lock()

    async def run_group(self, sample: TaskSample, submit_version: int, seed: int | None = None) -> TrajectoryGroup:
        """One episode of ``sample`` sampled with ``seed``; ``submit_version`` is its staleness start."""
        self.busy.start()
        try:
            group = await self.workflow.run(self.engine, sample, submit_version, seed)
        finally:
            self.busy.end()
        self.generated_tokens += group.num_output_tokens
        return group

    async def evaluate(self, samples: list[TaskSample], max_new_tokens: int) -> list[tuple[float, str]]:
        """Greedy (reward, completion) of held-out ``samples`` under the current weights."""
        greedy = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)

        async def one(sample: TaskSample) -> tuple[float, str]:
            (completion,) = await self.engine.generate(self.workflow.encode(sample), greedy, 1)
            return float(self.task.score(completion.text, sample)), completion.text

        self.busy.start()
        try:
            return list(await asyncio.gather(*(one(s) for s in samples)))
        finally:
            self.busy.end()

    async def load_weights(self, files: dict[str, bytes], version: int) -> float:
        """Write shipped weight files to local storage and load them in place; returns seconds."""
        async with self._update_lock:
            start = time.perf_counter()
            target = self.weights_root / f"v{version:06d}"
            tmp = self.weights_root / f".incoming-v{version:06d}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for name, data in files.items():
                if "/" in name or name.startswith("."):
                    raise ValueError(f"load_weights: refusing weight file name {name!r} (version {version})")
                (tmp / name).write_bytes(data)
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
            await self.engine.update_weights(str(target), version)
            for old in self.weights_root.glob("v*"):
                if old != target:
                    shutil.rmtree(old, ignore_errors=True)
            return time.perf_counter() - start

    def timeline(self, since: float) -> list[tuple[float, float]]:
        """Busy intervals overlapping [since, now], clipped to it."""
        return self.busy.spans(since)

    def stats(self) -> dict:
        """Engine busy intervals and counters for the driver's metrics."""
        return {
            "busy_intervals": list(self.busy.intervals),
            "busy_seconds": self.busy.busy_seconds(),
            "created": self.busy.created,
            "generated_tokens": self.generated_tokens,
            "version": self.engine.version,
        }
