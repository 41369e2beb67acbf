"""Ray actor around one learner rank (LM or DDPO); the group of ranks is driven by ``LearnerGroup``."""

from __future__ import annotations

import os
from pathlib import Path

import ray

from actors.process_env import worker_env
from actors.weight_transport import run_transport
from areal.config import TrainConfig
from areal.types import ChainBatch, TrainBatch
from areal.weight_sync import MB, NativeOffer, WeightManifest

NATIVE_GROUP = "weights"  # native transport: sends run in this thread while training runs in the default one


def learner_env(cfg: TrainConfig, use_gpu: bool) -> dict[str, str]:
    """Environment a learner process needs before DeepSpeed is imported."""
    env = worker_env(cfg.learner.num_cpus)
    if not use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
    if cfg.controller.deterministic:
        env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # cuBLAS needs it for deterministic GEMMs
    return env


class LearnerRank:
    """One data-parallel rank: trains its slice of each batch and serves weights (``LearnerActor`` in Ray)."""

    def __init__(self, cfg: TrainConfig, model_path: str, rank: int, master_addr: str, master_port: int,
                 checkpoint: str = "", start_model: str = ""):
        import torch

        from learners.deepspeed_setup import Rendezvous
        from learners.factory import make_learner

        torch.set_num_threads(max(1, int(cfg.learner.num_cpus)))
        if cfg.controller.deterministic:
            torch.use_deterministic_algorithms(True)
        rdv = Rendezvous(rank, cfg.learner.workers, master_addr, master_port)
        self.learner = make_learner(cfg, model_path, rdv, start_model or model_path)
        self.rollout_cfg = cfg.rollout
        on_gpu = torch.cuda.is_available()
        self.transport = run_transport(cfg, learner_on_gpu=on_gpu, engine_on_gpu=on_gpu and cfg.rollout.num_gpus > 0)
        self.sender = None  # native transport: vLLM's trainer-side engines, one per rollout engine
        self.manifest = None  # native transport: the version on offer (its buckets are the source)
        if checkpoint:
            self.learner.load_training_state(checkpoint)

    def ready(self) -> int:
        return self.learner.rdv.rank

    def node_ip(self) -> str:
        return ray.util.get_node_ip_address()

    def train_step(self, batch: TrainBatch | ChainBatch) -> dict[str, float]:
        return self.learner.train_step(batch)

    @ray.method(num_returns=2)
    def weights_payload(self) -> tuple[int, dict[str, bytes] | WeightManifest | None]:
        """(bytes exported, what rollout workers load): the small first value lets the driver confirm the export
        without fetching the second. Files transport: the weight files themselves, which go straight from the
        object store to the rollout workers; buckets: where this node's RAM holds them (ranks > 0: None); native:
        an offer of those buckets through this actor's ``push_weights``."""
        if self.transport.transport == "files":
            files = self.learner.weights_payload()
            return sum(len(b) for b in files.values()), files
        manifest = self.learner.weights_manifest(self.rollout_cfg.weight_bucket_mb * MB, self.rollout_cfg.staging_dir,
                                                 ray.get_runtime_context().get_node_id())
        if manifest is None or self.transport.transport != "native":
            return (manifest.total_bytes if manifest else 0), manifest
        self.manifest = manifest
        offer = NativeOffer(manifest, self.transport.backend, ray.get_runtime_context().current_actor)
        return manifest.total_bytes, offer

    def write_checkpoint_shard(self, staging: str) -> tuple[dict[str, str], str]:
        return self.learner.write_checkpoint_shard(staging)

    def commit_checkpoint(self, root: str, keep_last: int, staging: str, files: dict[str, str], meta: dict,
                          extra: dict[str, bytes]) -> str:
        from learners.checkpoint import CheckpointStore

        return str(CheckpointStore(root, keep_last).commit(Path(staging), files, meta, extra))

    def weights_digest(self) -> str:
        return self.learner.weights_digest()

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        """Remove this rank's exported weights (RAM that would outlive the process, which Ray kills)."""
        self.learner.remove_exports()


class NativeLearnerRank(LearnerRank):
    """A rank that also sends its exported versions through vLLM's native weight transfer (UNVERIFIED: see
    docs/weight_sync.md), from a second thread so training goes on meanwhile."""

    @ray.method(concurrency_group=NATIVE_GROUP)
    def push_weights(self, key: str, rollout_actor, version: int) -> None:
        """Send the offered ``version`` to ``rollout_actor``'s engine; the source is the exported buckets."""
        from actors.native_client import RolloutActorClient
        from learners.native_sender import NativeSender

        if self.manifest is None or self.manifest.version != version:
            offered = None if self.manifest is None else self.manifest.version
            raise RuntimeError(f"push_weights: version {version} requested, version {offered} on offer")
        if self.sender is None:
            self.sender = NativeSender(self.transport.backend, ray.util.get_node_ip_address())
        client = RolloutActorClient(rollout_actor, version, self.rollout_cfg.weight_sync_timeout_s)
        self.sender.send(self.manifest, key, client)


# CPU runs and the other transports keep Ray's plain actor (methods on its main thread); only the native transport
# needs a second thread, and Ray's concurrency groups move every method of such an actor off the main thread.
LearnerActor = ray.remote(LearnerRank)
NativeLearnerActor = ray.remote(concurrency_groups={NATIVE_GROUP: 1})(NativeLearnerRank)
