"""A rollout worker: one inference backend running many episodes at once, plus evaluation and weight loading.

Plain asyncio; ``actors/rollout_actor.py`` only decides which process it lives in. The
backend and workflow decide what an episode is (text completions, or denoising chains).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from pathlib import Path

from typing import Awaitable, Callable, Protocol

from areal.evaluation import EvalRecord
from areal.timeline import BusyTracker
from areal.types import TrajectoryGroup
from areal.weight_sync import WeightManifest, WeightsUnavailable
from rollouts.bucket_staging import FetchBucket, stage_adapter, stage_buckets, staged_feed
from rollouts.engines.base import BucketFeed, LoraAdapter, PolicyBackend
from rollouts.weight_staging import check_room
from rollouts.tasks.base import TaskSample


class Workflow(Protocol):
    """What one episode is (DESIGN.md "Workflow"); ``action_unit`` names what its samples count."""

    action_unit: str

    async def run(self, engine, sample: TaskSample, submit_version: int, seed: int | None = None) -> TrajectoryGroup:
        ...

    async def evaluate(self, engine, sample: TaskSample, suite: str = "eval", k: int = 0) -> EvalRecord:
        ...

    def close(self) -> None:
        """Release what the workflow runs besides the engine (its reward processes)."""


class RolloutWorker:
    """Runs workflows on one backend and tracks when that backend had work."""

    def __init__(self, engine: PolicyBackend, workflow: Workflow, weights_root: str | Path):
        self.engine, self.workflow = engine, workflow
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

    async def evaluate(self, samples: list[TaskSample], suite: str = "eval", k: int = 0) -> list[EvalRecord]:
        """What the current weights make of held-out ``samples`` (greedy text and ``k`` sampled completions,
        fixed-seed images), scored with the rewards of ``suite``; a failed reward is an outcome the driver
        counts, not an exception."""
        self.busy.start()
        try:
            return list(await asyncio.gather(*(self.workflow.evaluate(self.engine, s, suite, k) for s in samples)))
        finally:
            self.busy.end()

    async def load_weights(self, weights: dict[str, bytes] | WeightManifest, version: int,
                           fetch: FetchBucket | None = None, wait_s: float = 300.0) -> float:
        """Load a published version in place; returns seconds. ``weights``: the files of the files transport
        (written out here, then reloaded), or the manifest of the buckets transport: read in place, or, with
        ``fetch`` (the learner is on another node), fetched and staged here one bucket at a time, each staged
        bucket waited for at most ``wait_s`` (rollout.weight_sync_timeout_s)."""
        async with self._update_lock:
            start = time.perf_counter()
            if isinstance(weights, WeightManifest):
                await self._load_buckets(weights, version, fetch, wait_s)
            else:
                await self._load_files(weights, version)
            return time.perf_counter() - start

    async def load_native(self, push: Callable[[], Awaitable], version: int) -> float:
        """Receive ``version`` through vLLM's native transfer: ``push`` asks the learner to send it, and the
        learner drives the engine's native_start/update/finish meanwhile; returns seconds. If the push fails the
        engine is left paused (its weights may be partial) until an update succeeds."""
        async with self._update_lock:
            start = time.perf_counter()
            try:
                await push()
            except BaseException:
                await self.engine.native_abort()
                raise
            if self.engine.version != version:
                raise RuntimeError(f"load_native: the learner sent version {version}, the engine serves "
                                   f"{self.engine.version}")
            return time.perf_counter() - start

    async def _load_files(self, files: dict[str, bytes], version: int) -> None:
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

    async def _load_buckets(self, manifest: WeightManifest, version: int, fetch: FetchBucket | None,
                            wait_s: float) -> None:
        if manifest.version != version:
            raise ValueError(f"load_weights: manifest of version {manifest.version} published as version {version}")
        if fetch is None:
            gone = [path for path in manifest.paths() if not os.path.exists(path)]
            if gone:  # checked before the engine pauses: the learner's files went with a newer export or the learner
                raise WeightsUnavailable(f"load_weights: {len(gone)} of {len(manifest.buckets)} bucket files of "
                                         f"version {version} are gone, e.g. {gone[0]}")
        if manifest.adapter_config:  # LoRA adapters alone: a folder the engine serves as a LoRA request
            # a folder of its own per publication: the same version published again must never overwrite (or
            # delete) the folder of the adapter the engine is serving
            target = self.weights_root / f"adapter-v{version:06d}-{uuid.uuid4().hex[:8]}"
            await stage_adapter(manifest, fetch, target)
            try:
                await self.engine.update_weights(LoraAdapter(str(target), version), version)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)  # the engine owns the folder only once it has it
                raise
            return
        if fetch is None:
            feed = BucketFeed(manifest.paths(), tuple(b.names for b in manifest.buckets), version)
            await self.engine.update_weights(feed, version)
            return
        staging = self.weights_root / f"buckets-v{version:06d}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        feeder = asyncio.create_task(stage_buckets(manifest, fetch, staging))
        try:
            await self.engine.update_weights(staged_feed(manifest, staging, wait_s), version)
        except Exception as exc:
            if feeder.done() and not feeder.cancelled() and feeder.exception() is not None:
                raise feeder.exception() from exc  # the cause (e.g. the learner's weights are gone), not the symptom
            raise
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
            shutil.rmtree(staging, ignore_errors=True)

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
