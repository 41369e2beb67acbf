"""N learner actors forming one data-parallel group, placed together and driven as one."""

from __future__ import annotations

import logging
from pathlib import Path

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.learner_actor import LearnerActor, NativeLearnerActor, learner_env
from actors.remote_calls import wait_all
from actors.weight_transport import run_transport
from areal.config import TrainConfig
from areal.types import ChainBatch, TrainBatch

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
def _rendezvous_address() -> tuple[str, int]:
    """Runs on rank 0's bundle: that node's address and a free port for torch.distributed."""
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return ray.util.get_node_ip_address(), s.getsockname()[1]


class LearnerGroup:
    """Places ``learner.workers`` ranks, splits each batch across them and merges their stats."""

    def __init__(self, cfg: TrainConfig, model_path: str, use_gpu: bool, checkpoint: str = "", tag: str = "areal"):
        """``checkpoint``: a verified checkpoint directory to continue from (weights from its ``model/``)."""
        n = cfg.learner.workers
        start_model = model_path  # the KL reference: the run's starting model, whichever checkpoint is resumed
        if checkpoint:
            model_path = str(Path(checkpoint) / "model")
        self.cfg = cfg
        bundle = {"CPU": cfg.learner.num_cpus, **({"GPU": cfg.learner.num_gpus} if cfg.learner.num_gpus else {}),
                  **cfg.learner.resources}
        self.pg = placement_group([bundle] * n, strategy="PACK")
        wait_all([self.pg.ready()], cfg.learner.start_timeout_s, "learner placement group", "learner.start_timeout_s")
        ((addr, port),) = wait_all([_rendezvous_address.options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=0)).remote()],
            cfg.learner.start_timeout_s, "learner rendezvous address", "learner.start_timeout_s")
        choice = run_transport(cfg, learner_on_gpu=use_gpu and cfg.learner.num_gpus > 0,
                               engine_on_gpu=use_gpu and cfg.rollout.num_gpus > 0)
        log.info("weight transport: %s%s (%s)", choice.transport, f"/{choice.backend}" if choice.backend else "",
                 choice.reason)
        native = choice.transport == "native"
        self.actors = [
            (NativeLearnerActor if native else LearnerActor).options(
                name=f"{tag}-learner-{rank}",
                num_cpus=cfg.learner.num_cpus,
                num_gpus=cfg.learner.num_gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=rank),
                runtime_env={"env_vars": learner_env(cfg, use_gpu)},
            ).remote(cfg, model_path, rank, addr, port, checkpoint, start_model)
            for rank in range(n)
        ]
        self.names = [f"LearnerActor rank {rank}" for rank in range(n)]
        wait_all([a.ready.remote() for a in self.actors], cfg.learner.start_timeout_s, "learner start",
                 "learner.start_timeout_s", self.names)

    def train_step_async(self, batch: TrainBatch | ChainBatch) -> list[ray.ObjectRef]:
        """Start one step on every rank with its slice of ``batch``; returns the pending stats."""
        parts = batch.split(len(self.actors))
        if len(parts) < len(self.actors):
            raise ValueError(
                f"batch of {len(batch)} rows cannot feed {len(self.actors)} learner ranks; "
                "raise batch_size or rollout.samples_per_prompt, or lower learner.workers"
            )
        return [actor.train_step.remote(part) for actor, part in zip(self.actors, parts)]

    @staticmethod
    def merge_stats(per_rank: list[dict[str, float]]) -> dict[str, float]:
        """Mean over ranks, except counts of tokens or denoising steps, which add up."""
        merged = {}
        for key in per_rank[0]:
            values = [s[key] for s in per_rank]
            merged[key] = sum(values) if key.endswith(("tokens", "steps")) else sum(values) / len(values)
        return merged

    def weights_payload(self) -> ray.ObjectRef:
        """Rank 0's weight files (every rank joins, as ZeRO-3 gathering needs)."""
        sizes, payloads = zip(*[a.weights_payload.remote() for a in self.actors])
        # a failed export raises here, naming the rank, rather than later inside every rollout worker
        wait_all(list(sizes), self.cfg.rollout.weight_sync_timeout_s, "weights_payload",
                 "rollout.weight_sync_timeout_s", self.names)
        return payloads[0]

    def save_checkpoint(self, root: str, meta: dict, extra: dict[str, bytes] | None = None) -> str:
        """A complete checkpoint of every rank under ``root``/step-N (``meta`` must hold ``step``), plus
        ``extra`` files from the driver; refused if the ranks' weights differ."""
        from learners.checkpoint import CheckpointStore

        store = CheckpointStore(root, self.cfg.checkpoint.keep_last)
        store.root.mkdir(parents=True, exist_ok=True)
        staging = str(store.staging_dir(int(meta["step"])))
        timeout = self.cfg.learner.step_timeout_s
        shards = wait_all([a.write_checkpoint_shard.remote(staging) for a in self.actors], timeout,
                          "write_checkpoint_shard", "learner.step_timeout_s", self.names)
        if len({digest for _, digest in shards}) != 1:
            raise RuntimeError(f"learner replicas diverged by step {meta['step']}: {len(shards)} ranks hold "
                               f"{len({d for _, d in shards})} different weights (non-deterministic kernels or a "
                               "broken aggregator); checkpoint not committed")
        files = {k: v for shard, _ in shards for k, v in shard.items()}
        meta = {**meta, "learner_workers": len(self.actors)}
        ref = self.actors[0].commit_checkpoint.remote(root, store.keep_last, staging, files, meta, extra or {})
        return wait_all([ref], timeout, "commit_checkpoint", "learner.step_timeout_s", self.names[:1])[0]

    def weights_digests(self) -> list[str]:
        """Each rank's weight digest; all equal while the data-parallel replicas agree."""
        return wait_all([a.weights_digest.remote() for a in self.actors], self.cfg.learner.step_timeout_s,
                        "weights_digest", "learner.step_timeout_s", self.names)

    def pids(self) -> list[int]:
        """Process id of every rank (fault-injection tests kill them)."""
        return wait_all([a.pid.remote() for a in self.actors], 60, "pid", "(fixed 60 s)", self.names)

    def shutdown(self) -> None:
        # a rank's exported weights live in RAM outside its process (/dev/shm): ask it to remove them first;
        # a rank that is dead or hung leaves them to the next learner on its node (areal.ram_dirs)
        closing = [actor.close.remote() for actor in self.actors]
        ray.wait(closing, num_returns=len(closing), timeout=5)
        for actor in self.actors:
            ray.kill(actor)
        try:
            remove_placement_group(self.pg)
        except Exception:  # noqa: BLE001 - already gone with a failed node; nothing left to free
            pass
