"""A rollout worker: one inference backend running many episodes at once, plus evaluation and weight loading.

Plain asyncio; ``actors/rollout_actor.py`` only decides which process it lives in. The
backend and workflow decide what an episode is (text completions, or denoising chains).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from typing import Any, Protocol

from areal.timeline import BusyTracker
from areal.types import TrajectoryGroup
from rollouts.engines.base import PolicyBackend
from rollouts.rewards import RewardOutcome
from rollouts.weight_staging import check_room
from rollouts.tasks.base import Task, TaskSample


class Workflow(Protocol):
    """What one episode is (DESIGN.md "Workflow"); ``action_unit`` names what its samples count."""

    action_unit: str

    async def run(self, engine, sample: TaskSample, submit_version: int, seed: int | None = None) -> TrajectoryGroup:
        ...

    async def evaluate(self, engine, sample: TaskSample) -> tuple[RewardOutcome, Any]:
        ...

    def close(self) -> None:
        """Release what the workflow runs besides the engine (its reward processes)."""


class RolloutWorker:
    """Runs workflows on one backend and tracks when that backend had work."""

    def __init__(self, engine: PolicyBackend, workflow: Workflow, task: Task, weights_root: str | Path):
        self.engine, self.workflow, self.task = engine, workflow, task
        self.weights_root = Path(weights_root)
        self.weights_root.mkdir(parents=True, exist_ok=True)
        self.busy = BusyTracker()
        self.generated_actions = 0  # tokens, or denoising steps
        self._update_lock = asyncio.Lock()

    async def run_group(self, sample: TaskSample, submit_version: int, seed: int | None = None) -> TrajectoryGroup:
        """One episode of ``sample`` sampled with ``seed``; ``submit_version`` is its staleness start."""
        self.busy.start()
        try:
            group = await self.workflow.run(self.engine, sample, submit_version, seed)
        finally:
            self.busy.end()
        self.generated_actions += group.num_actions
        return group

    async def evaluate(self, samples: list[TaskSample]) -> list[tuple[RewardOutcome, Any]]:
        """(reward outcome, output) of held-out ``samples`` under the current weights (greedy text, fixed-seed
        images); a failed reward is an outcome the driver counts, not an exception."""
        self.busy.start()
        try:
            return list(await asyncio.gather(*(self.workflow.evaluate(self.engine, s) for s in samples)))
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
            check_room(tmp, sum(len(data) for data in files.values()), f"weights version {version}")
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

    async def close(self) -> None:
        """Stop the engine and the workflow's reward processes."""
        try:
            await self.engine.close()
        finally:
            self.workflow.close()

    def stats(self) -> dict:
        """Engine busy intervals and counters for the driver's metrics."""
        return {
            "busy_intervals": list(self.busy.intervals),
            "busy_seconds": self.busy.busy_seconds(),
            "created": self.busy.created,
            "generated_actions": self.generated_actions,
            "version": self.engine.version,
        }
