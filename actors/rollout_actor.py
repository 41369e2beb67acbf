"""Ray actor around one RolloutWorker (an inference backend plus its episodes: text or diffusion)."""

from __future__ import annotations

import os

import ray

from actors.process_env import worker_env
from actors.weight_fetch import bucket_fetcher
from actors.weight_transport import run_transport
from areal.config import TrainConfig
from areal.evaluation import EvalRecord
from areal.types import TrajectoryGroup
from areal.weight_sync import NativeOffer, WeightManifest
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
        self.sync_timeout_s = cfg.rollout.weight_sync_timeout_s
        self.staging = WeightStaging(rank, cfg.rollout.staging_dir)
        device = "cuda" if torch.cuda.is_available() and cfg.rollout.num_gpus else "cpu"
        choice = run_transport(cfg, learner_on_gpu=cfg.learner.num_gpus > 0, engine_on_gpu=device == "cuda")
        self.native_backend = choice.backend if choice.transport == "native" else ""
        self.key = f"rollout-{rank}-pid{os.getpid()}"  # this engine, for the learner's native senders
        env_pool = None
        try:
            if cfg.env.multi_turn and cfg.env.workers:
                from actors.env_worker import RayEnvironmentPool

                env_pool = RayEnvironmentPool(cfg, model_path, owner=f"rollout-{rank}")
            self.worker = make_rollout_worker(cfg, model_path, rank, self.staging.path, device, self.native_backend,
                                              env_pool)
        except BaseException:
            if env_pool is not None:
                env_pool.close()
            self.staging.remove()
            raise

    async def ready(self) -> int:
        return self.rank

    async def run_group(self, sample: TaskSample, submit_version: int, seed: int) -> TrajectoryGroup:
        return await self.worker.run_group(sample, submit_version, seed)

    async def evaluate(self, samples: list[TaskSample], suite: str, k: int) -> list[EvalRecord]:
        return await self.worker.evaluate(samples, suite, k)

    async def load_weights(self, weights: dict[str, bytes] | WeightManifest | NativeOffer, version: int) -> float:
        if isinstance(weights, NativeOffer):
            if weights.backend == self.native_backend:  # the learner sends; the native_* calls below receive
                me = ray.get_runtime_context().current_actor
                return await self.worker.load_native(lambda: weights.sender.push_weights.remote(self.key, me, version),
                                                     version)
            weights = weights.manifest  # an engine built without it reads the offer's buckets
        fetch = bucket_fetcher(weights) if isinstance(weights, WeightManifest) else None
        return await self.worker.load_weights(weights, version, fetch, self.sync_timeout_s)

    # vLLM's native weight transfer, driven from the learner (actors.native_client); UNVERIFIED
    async def native_init(self, init_info: dict) -> None:
        await self.worker.engine.native_init(init_info)

    async def native_start(self) -> None:
        await self.worker.engine.native_start()

    async def native_update(self, update_info) -> None:
        await self.worker.engine.native_update(update_info)

    async def native_finish(self, version: int) -> None:
        await self.worker.engine.native_finish(version)

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
