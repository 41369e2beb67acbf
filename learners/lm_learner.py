"""The LM learner: staleness-aware PPO on a causal LM, one DeepSpeed engine per rank.

It is blind to the algorithm: advantages arrive in the batch (computed on the
controller by the estimator the config names), and the loss is
``areal.algos.decoupled_ppo_loss`` with the configured clip settings.
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from areal.algos import decoupled_ppo_loss
from areal.config import AlgoConfig, LearnerConfig
from areal.types import TrainBatch
from learners.checkpoint import CheckpointError, digests, read_state, write_state
from learners.deepspeed_setup import Rendezvous, full_state_dict, make_engine, use_cuda
from learners.grad_exchange import GradientExchange

log = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """log pi(token_t | tokens_<t) at every position t >= 1 of [B, T]; position 0 is 0.

    Logits are divided by the sampling temperature so the learner scores the
    distribution the engine sampled from.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float() / temperature
    picked = logits.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    logp = picked - torch.logsumexp(logits, dim=-1)
    return torch.nn.functional.pad(logp, (1, 0))


def _digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


class LMLearner:
    """PPO/GRPO learner for Hugging Face causal LMs (DESIGN.md "Learner")."""

    def __init__(
        self,
        model_path: str,
        cfg: LearnerConfig,
        algo: AlgoConfig,
        temperature: float = 1.0,
        rdv: Rendezvous = Rendezvous(),
        seed: int = 0,
        total_updates: int = 1,
    ):
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed + rdv.rank)
        self.cfg, self.algo, self.temperature, self.rdv = cfg, algo, temperature, rdv
        self.model_path = Path(model_path)
        dtype = torch.bfloat16 if use_cuda() and not cfg.gathers_gradients else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        self.engine = make_engine(model, cfg, rdv, total_updates)
        self.exchange = GradientExchange(self.engine, cfg, rdv, seed)
        self.device = self.engine.device
        self.version = 0

    # -- training ---------------------------------------------------------
    def _logprobs(self, batch: TrainBatch) -> torch.Tensor:
        return token_logprobs(self.engine, batch.input_ids.to(self.device), batch.attention_mask.to(self.device),
                              self.temperature)

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        """One policy update from this rank's rows: proximal logprobs, then ``minibatches`` optimizer steps."""
        start = time.perf_counter()
        self.engine.train()
        behavior = batch.behavior_logprobs.to(self.device)
        mask = batch.loss_mask.to(self.device)
        # Stage 1: the proximal policy is the weights at the start of this step (AReaL §5.2).
        with torch.no_grad():
            proximal = self._logprobs(batch) if self.algo.decoupled else behavior
        mismatch = ((behavior - proximal) * mask).sum() / mask.sum().clamp_min(1)

        # Stage 2: clipped decoupled objective, one optimizer step per minibatch.
        stats: dict[str, list[float]] = {}
        rows = torch.arange(batch.input_ids.shape[0])
        for part in torch.tensor_split(rows, self.cfg.minibatches):
            if len(part) == 0:
                continue
            mb = batch.select(part)
            current = self._logprobs(mb)
            loss, info = decoupled_ppo_loss(
                current,
                proximal[part],
                behavior[part] if self.algo.decoupled else proximal[part],
                mb.advantages.to(self.device),
                mask[part],
                eps_clip=self.algo.eps_clip,
                eps_clip_high=self.algo.eps_clip_high,
                dual_clip=self.algo.dual_clip,
                behavior_weight_cap=self.algo.behavior_weight_cap if self.algo.decoupled else None,
                level=self.algo.level,
            )
            self.engine.backward(loss)
            for key, value in self.exchange.combine().items():
                stats.setdefault(key, []).append(value)
            self.engine.step()
            for key in ("clip_fraction", "dual_clip_fraction", "dropped_fraction", "behavior_weight_mean",
                        "approx_kl"):
                stats.setdefault(key, []).append(float(info[key]))
            stats.setdefault("loss", []).append(float(loss.detach()))
            grad_norm = self.engine.get_global_grad_norm()
            if grad_norm is not None:
                stats.setdefault("grad_norm", []).append(float(grad_norm))
        self.version += 1
        out = {f"learner/{k}": _mean(v) for k, v in stats.items()}
        out.update({
            "learner/behavior_proximal_kl": float(mismatch),
            "learner/tokens": float(mask.sum()),
            "learner/step_seconds": time.perf_counter() - start,
            "learner/lr": float(self.engine.get_lr()[0]),
        })
        return out

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
        state = full_state_dict(self.engine, self.cfg.zero_stage)  # gathered once for the model and the digest
        model_dir = self.save_hf(staging / "model", state)
        if self.rdv.rank == 0:
            files += sorted(p for p in model_dir.iterdir() if p.is_file())
        return digests(staging, files), _digest(state)

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
        return _digest(full_state_dict(self.engine, self.cfg.zero_stage))

    # -- weights ----------------------------------------------------------
    def save_hf(self, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the current weights (or ``state``, already gathered) as a Hugging Face model directory."""
        path = Path(path)
        if state is None:
            state = full_state_dict(self.engine, self.cfg.zero_stage)  # collective under ZeRO-3: every rank calls
        if self.rdv.rank != 0:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        # same directory as the target, so the final rename is atomic
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.saving-"))
        self.engine.module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        for name in TOKENIZER_FILES:
            if (self.model_path / name).exists():
                shutil.copy2(self.model_path / name, tmp / name)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)  # readers never see a half-written checkpoint
        return path

    def weights_payload(self) -> dict[str, bytes]:
        """The model's safetensors and config files as bytes, for shipping to rollout workers.

        Every rank must call it (ZeRO-3 gathers parameters collectively); ranks other than 0 return {}.
        """
        if self.rdv.rank != 0:
            full_state_dict(self.engine, self.cfg.zero_stage)
            return {}
        with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
            saved = self.save_hf(Path(tmp) / "model")
            return {p.name: p.read_bytes() for p in saved.iterdir() if p.suffix in (".safetensors", ".json")}
