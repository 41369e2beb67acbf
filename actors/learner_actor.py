"""Ray actor around one learner rank (LM or DDPO); the group of ranks is driven by ``LearnerGroup``."""

from __future__ import annotations

import os
from pathlib import Path

import ray

from actors.process_env import worker_env
from areal.config import TrainConfig
from areal.types import ChainBatch, TrainBatch


def learner_env(cfg: TrainConfig, use_gpu: bool) -> dict[str, str]:
    """Environment a learner process needs before DeepSpeed is imported."""
    env = worker_env(cfg.learner.num_cpus)
    if not use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
    if cfg.controller.deterministic:
        env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # cuBLAS needs it for deterministic GEMMs
    return env


@ray.remote
class LearnerActor:
    """One data-parallel rank: trains its slice of each batch and serves weights."""

    def __init__(self, cfg: TrainConfig, model_path: str, rank: int, master_addr: str, master_port: int,
                 checkpoint: str = ""):
        import torch

        from learners.deepspeed_setup import Rendezvous
        from learners.factory import make_learner

        torch.set_num_threads(max(1, int(cfg.learner.num_cpus)))
        if cfg.controller.deterministic:
            torch.use_deterministic_algorithms(True)
        rdv = Rendezvous(rank, cfg.learner.workers, master_addr, master_port)
        self.learner = make_learner(cfg, model_path, rdv)
        if checkpoint:
            self.learner.load_training_state(checkpoint)

    def ready(self) -> int:
        return self.learner.rdv.rank

    def node_ip(self) -> str:
        return ray.util.get_node_ip_address()

    def train_step(self, batch: TrainBatch | ChainBatch) -> dict[str, float]:
        return self.learner.train_step(batch)

    @ray.method(num_returns=2)
    def weights_payload(self) -> tuple[int, dict[str, bytes]]:
        """(bytes exported, weight files): the small first value lets the driver confirm the export
        without fetching the files, which go straight from the object store to the rollout workers."""
        files = self.learner.weights_payload()
        return sum(len(b) for b in files.values()), files

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
