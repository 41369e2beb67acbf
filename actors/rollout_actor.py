"""Ray actor around one RolloutWorker (an inference backend plus its episodes: text or diffusion)."""

from __future__ import annotations

import os
from typing import Any

import ray

from actors.process_env import worker_env
from areal.config import TrainConfig
from areal.types import TrajectoryGroup
from rollouts.tasks.base import TaskSample
from rollouts.weight_staging import WeightStaging


def rollout_env(cfg: TrainConfig, use_gpu: bool) -> dict[str, str]:
    """Environment a rollout process needs before vLLM is imported."""
    env = worker_env(cfg.rollout.num_cpus, VLLM_LOGGING_LEVEL="WARNING")
    if not use_gpu:
        # the KV cache size comes from engine.kv_cache_gb (VLLM_CPU_KVCACHE_SPACE would override it)
        env["VLLM_TARGET_DEVICE"] = "cpu"
    return env


@ray.remote
class RolloutActor:
    """Async actor: many ``run_group`` calls overlap on one engine; weight updates interleave."""

    def __init__(self, cfg: TrainConfig, model_path: str, rank: int):
        import torch

        from rollouts.factory import make_rollout_worker

        self.rank = rank
        self.staging = WeightStaging(rank, cfg.rollout.staging_dir)
        device = "cuda" if torch.cuda.is_available() and cfg.rollout.num_gpus else "cpu"
        try:
            self.worker = make_rollout_worker(cfg, model_path, rank, self.staging.path, device)
        except BaseException:
            self.staging.remove()
            raise

    async def ready(self) -> int:
        return self.rank

    async def run_group(self, sample: TaskSample, submit_version: int, seed: int) -> TrajectoryGroup:
        return await self.worker.run_group(sample, submit_version, seed)

    async def evaluate(self, samples: list[TaskSample]) -> list[tuple[float, Any]]:
        return await self.worker.evaluate(samples)

    async def load_weights(self, files: dict[str, bytes], version: int) -> float:
        return await self.worker.load_weights(files, version)

    async def stats(self) -> dict:
        return self.worker.stats()

    async def timeline(self, since: float) -> list[tuple[float, float]]:
        return self.worker.timeline(since)

    async def pid(self) -> int:
        return os.getpid()

    async def close(self) -> None:
        try:
            await self.worker.close()
        finally:
            self.staging.remove()
