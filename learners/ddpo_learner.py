"""The DDPO learner: importance-sampled, clipped policy gradient over denoising steps (ALGORITHMS.md §4).

Per update, each chain trains on ``diffusion.timestep_fraction`` of its steps (a
random subset per chain). Gradients accumulate over those steps (one backward per
step keeps one denoiser graph alive at a time, which is what lets large pipelines
train) and the optimizer steps once per minibatch. Stale chains are corrected as
text is: with ``algo.decoupled`` the ratio is taken against the proximal policy
(the weights at the start of the update) and each step is weighted by
pi_prox / pi_behav (capped), exactly ``decoupled_ppo_loss`` over [chains, 1].
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from areal.algos import decoupled_ppo_loss
from areal.algos.ddpo import ddim_step_with_logprob, ddpo_loss
from areal.config import AlgoConfig, DiffusionConfig, LearnerConfig
from areal.models.diffusion_policy import PAYLOAD_FILE, DiffusionPolicy
from areal.types import ChainBatch
from learners.deepspeed_learner import DeepSpeedLearner
from learners.deepspeed_setup import Rendezvous, use_cuda


class DDPOLearner(DeepSpeedLearner):
    """DDPO for a diffusers pipeline's denoiser (all weights, or LoRA adapters)."""

    def __init__(self, model_path: str, cfg: LearnerConfig, algo: AlgoConfig, diffusion: DiffusionConfig,
                 rdv: Rendezvous = Rendezvous(), seed: int = 0, total_updates: int = 1):
        torch.manual_seed(seed + rdv.rank)
        self.algo, self.diffusion = algo, diffusion
        self.policy = DiffusionPolicy(model_path, num_steps=diffusion.num_steps,
                                      guidance_scale=diffusion.guidance_scale, lora_rank=diffusion.lora_rank,
                                      lora_alpha=diffusion.lora_alpha, device="cuda" if use_cuda() else "cpu")
        self.trainable = sorted(self.policy.trainable_names())
        if cfg.gradient_checkpointing:
            self.policy.unet.enable_gradient_checkpointing()
        super().__init__(self.policy.unet, cfg, rdv, seed, total_updates)

    # -- training ---------------------------------------------------------
    def step_logprobs(self, batch: ChainBatch, rows: torch.Tensor, positions: torch.Tensor, cond) -> torch.Tensor:
        """log p(x_{k+1} | x_k) under the current weights at step index ``positions[i]`` of chain ``rows[i]``."""
        x_t = batch.latents[rows, positions].to(self.device)
        x_prev = batch.latents[rows, positions + 1].to(self.device)
        t = batch.timesteps[rows, positions].to(self.device)
        if cond is not None:
            cond = cond[rows.to(cond.device)]
        dtype = next(self.engine.module.parameters()).dtype  # bf16 when DeepSpeed trains in bf16 on a GPU
        if cond is not None and cond.is_floating_point():
            cond = cond.to(dtype)
        eps = self.policy.predict_noise(x_t.to(dtype), t, cond, denoiser=self.engine).float()
        _, logp = ddim_step_with_logprob(self.policy.scheduler, eps, t, x_t, eta=self.diffusion.eta,
                                         prev_sample=x_prev)
        return logp.float()

    def forwards(self, rows: torch.Tensor) -> list[tuple[torch.Tensor, float]]:
        """``rows`` in groups of at most ``diffusion.images_per_forward`` chains, each with its loss weight; as
        many groups on every rank (fillers weigh 0), since ZeRO-2/3 make each forward and backward a collective."""
        groups = [(g, 1.0) for g in rows.split(self.diffusion.images_per_forward or max(len(rows), 1)) if len(g)]
        count = self.agreed_count(len(groups))
        return groups + [(groups[0][0][:1], 0.0)] * (count - len(groups))

    def train_step(self, batch: ChainBatch) -> dict[str, float]:
        """One policy update: choose each chain's trained steps, score them under the proximal policy, then
        ``learner.minibatches`` optimizer steps, each accumulating gradients over the chosen steps."""
        start = time.perf_counter()
        self.engine.train()
        n, steps = batch.timesteps.shape
        k = self.diffusion.trained_steps
        if steps != self.diffusion.num_steps:
            raise ValueError(f"chains of {steps} steps, but diffusion.num_steps = {self.diffusion.num_steps}: the "
                             "sampler and the learner must use the same schedule")
        chosen = torch.stack([torch.randperm(steps)[:k] for _ in range(n)])  # [N, k], learner's RNG
        behavior = batch.behavior_logprobs[torch.arange(n)[:, None], chosen].to(self.device)  # [N, k]
        cond = self.policy.condition(list(batch.prompts))
        proximal = self.proximal_logprobs(batch, chosen, cond) if self.algo.decoupled else behavior
        advantages = batch.advantages.to(self.device).clamp(-self.diffusion.adv_clip_max, self.diffusion.adv_clip_max)

        stats: dict[str, list[float]] = {}
        for part in self.minibatch_rows(n):
            self.train_minibatch(batch, part, chosen, cond, (proximal, behavior, advantages), stats)
            self.optimizer_step(stats)
        return self.finish_update(stats, start, {
            "learner/behavior_proximal_kl": float((behavior - proximal).mean()),
            "learner/advantage_abs_mean": float(advantages.abs().mean()),
            "learner/denoising_steps": float(n * k),
        })

    @torch.no_grad()
    def proximal_logprobs(self, batch: ChainBatch, chosen: torch.Tensor, cond) -> torch.Tensor:
        """[N, k] log-probs of the chosen steps under these weights, before this update (AReaL §5.2)."""
        out = torch.empty(chosen.shape, device=self.device)
        for rows, _ in self.forwards(torch.arange(len(batch))):
            for j in range(chosen.shape[1]):
                out[rows.to(self.device), j] = self.step_logprobs(batch, rows, chosen[rows, j], cond)
        return out

    def train_minibatch(self, batch: ChainBatch, part: torch.Tensor, chosen: torch.Tensor, cond, inputs: tuple,
                        stats: dict) -> None:
        """Backward passes over ``part``'s chosen steps, one forward per (group of chains, step); each loss is
        scaled by its share of the minibatch's chains and steps, so the accumulated gradient is the mean over
        all of them (one denoiser graph alive at a time, which is what lets large pipelines train)."""
        proximal, behavior, advantages = inputs
        k = chosen.shape[1]
        for rows, weight in self.forwards(part):
            on_device = rows.to(self.device)
            scale = weight * len(rows) / len(part) / k
            for j in range(k):
                current = self.step_logprobs(batch, rows, chosen[rows, j], cond)
                loss, info = self.loss(current, proximal[on_device, j], behavior[on_device, j], advantages[on_device])
                self.engine.backward(loss * scale)
                if weight:
                    stats.setdefault("loss", []).append(float(loss.detach()))
                    for key in ("clip_fraction", "approx_kl", "behavior_weight_mean", "dropped_fraction"):
                        if key in info:
                            stats.setdefault(key, []).append(float(info[key]))

    def loss(self, current, proximal, behavior, advantages) -> tuple[torch.Tensor, dict]:
        """DDPO-IS for one step of each chain: against the proximal policy with behaviour weights (decoupled),
        or against the behaviour policy (the paper's)."""
        if not self.algo.decoupled:
            return ddpo_loss(current, behavior, advantages, clip_range=self.algo.eps_clip,
                             adv_clip_max=self.diffusion.adv_clip_max)
        column = (current[:, None], proximal[:, None], behavior[:, None], advantages[:, None])
        return decoupled_ppo_loss(*column, torch.ones_like(column[0], dtype=torch.bool), eps_clip=self.algo.eps_clip,
                                  eps_clip_high=self.algo.eps_clip_high,
                                  behavior_weight_cap=self.algo.behavior_weight_cap)

    # -- weights ----------------------------------------------------------
    def trained_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The trained part of the denoiser's state: all of it, or only the LoRA adapters."""
        return state if not self.diffusion.lora_rank else {k: state[k] for k in self.trainable}

    def save_model(self, path: Path, state: dict[str, torch.Tensor]) -> None:
        """A diffusers pipeline directory loadable on its own (frozen parts hard-linked from the source)."""
        self.policy.save_pipeline(path, self.trained_state(state))

    def payload_files(self, state: dict[str, torch.Tensor]) -> dict[str, bytes]:
        """The trained weights as one safetensors file, which samplers load in place between two steps."""
        from safetensors.torch import save

        trained = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.trained_state(state).items()}
        return {PAYLOAD_FILE: save(trained)}
