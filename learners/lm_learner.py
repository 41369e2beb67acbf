"""The LM learner: staleness-aware PPO on a causal LM, one DeepSpeed engine per rank.

It is blind to the algorithm: advantages arrive in the batch (computed on the
controller by the estimator the config names), and the loss is
``areal.algos.decoupled_ppo_loss`` with the configured clip settings.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from areal.algos import decoupled_ppo_loss
from areal.config import AlgoConfig, LearnerConfig
from areal.types import TrainBatch
from learners.deepspeed_learner import DeepSpeedLearner
from learners.deepspeed_setup import Rendezvous, use_cuda

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


class LMLearner(DeepSpeedLearner):
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
        self.algo, self.temperature = algo, temperature
        self.model_path = Path(model_path)
        dtype = torch.bfloat16 if use_cuda() and not cfg.gathers_gradients else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        super().__init__(model, cfg, rdv, seed, total_updates)

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
            self.backward_and_step(loss, stats)
            for key in ("clip_fraction", "dual_clip_fraction", "dropped_fraction", "behavior_weight_mean",
                        "approx_kl"):
                stats.setdefault(key, []).append(float(info[key]))
        return self.finish_update(stats, start, {"learner/behavior_proximal_kl": float(mismatch),
                                                 "learner/tokens": float(mask.sum())})

    # -- weights ----------------------------------------------------------
    def save_model(self, path: Path, state: dict[str, torch.Tensor]) -> None:
        """A Hugging Face model directory (safetensors) with the tokenizer files of the starting model."""
        self.engine.module.save_pretrained(path, state_dict=state, safe_serialization=True)
        for name in TOKENIZER_FILES:
            if (self.model_path / name).exists():
                shutil.copy2(self.model_path / name, path / name)

    def payload_files(self, state: dict[str, torch.Tensor]) -> dict[str, bytes]:
        """The model's safetensors and config files, which vLLM loads in place."""
        with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
            self.save_model(Path(tmp), state)
            return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.suffix in (".safetensors", ".json")}
