"""What every learner shares: one DeepSpeed engine per rank, its gradient exchange, checkpoints and weights.

Subclasses own the update (``train_step``) and the model format (``save_model``,
``payload_files``); resuming, replica digests and ZeRO-3 gathering are written once here.
"""

from __future__ import annotations

import abc
import hashlib
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from areal.config import LearnerConfig
from areal.weight_sync import WeightManifest, plan_buckets
from learners.checkpoint import CheckpointError, digests, read_state, write_state
from learners.deepspeed_setup import (Rendezvous, full_state_dict, make_engine, partial_state_dict, state_sizes,
                                      use_cuda)
from learners.grad_exchange import GradientExchange
from learners.weight_export import BucketExporter


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


class DeepSpeedLearner(abc.ABC):
    """One data-parallel rank of a learner group (DESIGN.md "Learner")."""

    def __init__(self, model: torch.nn.Module, cfg: LearnerConfig, rdv: Rendezvous, seed: int, total_updates: int):
        self.cfg, self.rdv = cfg, rdv
        self.engine = make_engine(model, cfg, rdv, total_updates)
        self.exchange = GradientExchange(self.engine, cfg, rdv, seed)
        self.device = self.engine.device
        self.version = 0
        self._exporter: BucketExporter | None = None  # rank 0's exported buckets (rollout.weight_transport)

    @abc.abstractmethod
    def train_step(self, batch) -> dict[str, float]:
        """One policy update from this rank's rows; returns ``learner/*`` stats."""

    @abc.abstractmethod
    def save_model(self, path: Path, state: dict[str, torch.Tensor]) -> None:
        """Write ``state`` (the gathered weights) as a loadable model directory at ``path`` (rank 0 only)."""

    @abc.abstractmethod
    def payload_files(self, state: dict[str, torch.Tensor]) -> dict[str, bytes]:
        """The files a rollout backend loads to run ``state`` (flat names)."""

    def export_names(self) -> list[str]:
        """State-dict names a bucket export carries, in load order (a subclass leaves out what the engine
        derives, such as a tied LM head)."""
        raise NotImplementedError(f"{type(self).__name__} has no bucket export; set rollout.weight_transport=files")

    # -- one update -------------------------------------------------------
    def optimizer_step(self, stats: dict[str, list[float]]) -> None:
        """After a minibatch's backward passes: combine gradients across ranks, then one optimizer step.
        Exchange timings and the grad norm go to ``stats``."""
        for key, value in self.exchange.combine().items():
            stats.setdefault(key, []).append(value)
        started = time.perf_counter()
        self.engine.step()
        stats.setdefault("optimizer_seconds", []).append(time.perf_counter() - started)
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            stats.setdefault("grad_norm", []).append(float(grad_norm))

    def agreed_count(self, count: int, smallest: bool = False) -> int:
        """The largest (``smallest``: the smallest) ``count`` over the data-parallel ranks (each forward and
        backward is a collective under ZeRO-2/3, and each optimizer step an all-reduce, so ranks run the same
        number of them)."""
        if self.rdv.world_size == 1:
            return count
        value = torch.tensor([count], dtype=torch.long, device=self.device)
        op = torch.distributed.ReduceOp.MIN if smallest else torch.distributed.ReduceOp.MAX
        torch.distributed.all_reduce(value, op=op)
        return int(value.item())

    def minibatch_rows(self, rows: int) -> list[torch.Tensor]:
        """This rank's row indices in as many minibatches (optimizer steps) as every rank can fill:
        ``learner.minibatches``, or fewer when some rank's slice has fewer rows (16 rows over 5 ranks with 4
        minibatches: slices of 3 rows). Ranks taking different numbers of steps would hang in the all-reduce."""
        count = self.agreed_count(max(1, min(self.cfg.minibatches, rows)), smallest=True)
        return [part for part in torch.tensor_split(torch.arange(rows), count) if len(part)]

    def finish_update(self, stats: dict[str, list[float]], started: float, extra: dict[str, float]) -> dict:
        """The new version's ``learner/*`` stats: means over minibatches of what was recorded, except times
        (``*_seconds``), which add up to the step's, plus ``extra``."""
        self.version += 1
        out = {f"learner/{key}": sum(values) if key.endswith("_seconds") else mean(values)
               for key, values in stats.items()}
        out.update(extra)
        out["learner/step_seconds"] = time.perf_counter() - started
        out["learner/lr"] = float(self.engine.get_lr()[0])
        return out

    def gathered_state(self) -> dict[str, torch.Tensor]:
        """The whole model on CPU (collective under ZeRO-3: every rank calls it)."""
        return full_state_dict(self.engine, self.cfg.zero_stage)

    # -- checkpoints ------------------------------------------------------
    def training_state(self) -> dict:
        """Everything besides the weights that continuing this rank's training needs."""
        return {
            "optimizer": self.engine.optimizer.state_dict(),
            "lr_scheduler": self.engine.lr_scheduler.state_dict(),
            "engine_steps": [self.engine.global_steps, self.engine.global_samples, self.engine.micro_steps],
            "exchange_steps": self.exchange.steps,
            "version": self.version,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if use_cuda() else [],
                "python": random.getstate(),
                "numpy": np.random.get_state(),
            },
        }

    def write_checkpoint_shard(self, staging: str | Path) -> tuple[dict[str, str], str]:
        """This rank's part of a checkpoint into ``staging``: ({relative path: sha256} of what it wrote,
        the digest of its weights), so the caller can refuse to commit replicas that disagree.

        Every rank must call it (ZeRO-3 gathers the weights collectively); rank 0 also writes the model.
        """
        staging = Path(staging)
        files = write_state(staging / "learner", f"rank-{self.rdv.rank:03d}", self.training_state())
        state = self.gathered_state()  # gathered once for the model and the digest
        model_dir = self.save_model_atomic(staging / "model", state)
        if self.rdv.rank == 0:
            files += sorted(p for p in model_dir.rglob("*") if p.is_file())
        return digests(staging, files), state_digest(state)

    def load_training_state(self, checkpoint: str | Path) -> None:
        """Continue from a verified checkpoint whose ``model/`` this learner was built from."""
        path = Path(checkpoint) / "learner"
        name = f"rank-{self.rdv.rank:03d}"
        if not (path / f"{name}.safetensors").exists():
            raise CheckpointError(f"{checkpoint}: no state for learner rank {self.rdv.rank}; it was saved with "
                                  "another learner.workers; resume with the same number of learners")
        state = read_state(path, name)
        self.engine.optimizer.load_state_dict(state["optimizer"])
        self.engine.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.engine.global_steps, self.engine.global_samples, self.engine.micro_steps = state["engine_steps"]
        self.exchange.steps = state["exchange_steps"]
        self.version = state["version"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and use_cuda():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])

    def weights_digest(self) -> str:
        """sha256 over every parameter's bytes: equal across ranks while replicas are identical."""
        return state_digest(self.gathered_state())

    # -- weights ----------------------------------------------------------
    def save_model_atomic(self, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the current weights (or ``state``, already gathered) as a model directory; readers never see
        a half-written one (written beside it, then renamed)."""
        path = Path(path)
        if state is None:
            state = self.gathered_state()
        if self.rdv.rank != 0:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.saving-"))
        self.save_model(tmp, state)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
        return path

    def weights_payload(self) -> dict[str, bytes]:
        """The files rollout workers load, as bytes. Every rank must call it (ZeRO-3 gathers parameters
        collectively); ranks other than 0 return {}."""
        state = self.gathered_state()
        return self.payload_files(state) if self.rdv.rank == 0 else {}

    def remove_exports(self) -> None:
        """Delete the exported buckets (they are in RAM, e.g. /dev/shm, not in this process)."""
        if self._exporter is not None:
            self._exporter.remove()

    def weights_manifest(self, bound_bytes: int, root: str = "", node_id: str = "") -> WeightManifest | None:
        """The current weights written as buckets of at most ``bound_bytes`` into RAM on this node (under
        ``root``, default /dev/shm), replacing the previous version; returns where they lie. Every rank must
        call it (ZeRO-3 gathers each bucket collectively, in the same order on every rank); ranks other than 0
        write nothing and return None."""
        sizes = self.export_sizes()
        if self.rdv.rank != 0:
            if self.cfg.zero_stage == 3:
                for names in plan_buckets(sizes, bound_bytes):
                    self.export_tensors(names)
            return None
        if self._exporter is None:
            self._exporter = BucketExporter(bound_bytes, root, node_id)
        return self._exporter.export(self.version, sizes, self.export_tensors)

    def export_sizes(self) -> list[tuple[str, int]]:
        """(name, bytes) of every tensor a bucket export carries, in ``export_names`` order."""
        all_sizes = state_sizes(self.engine, self.cfg.zero_stage)
        return [(name, all_sizes[name]) for name in self.export_names()]

    def export_tensors(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The exported tensors ``names`` on CPU (collective under ZeRO-3: every rank asks for the same names)."""
        return partial_state_dict(self.engine, self.cfg.zero_stage, names)
