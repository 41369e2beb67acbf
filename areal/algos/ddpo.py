"""DDPO math (Black et al. 2023, "Training Diffusion Models with RL"); ALGORITHMS.md §4.

The denoising chain is an MDP whose action at each step is x_{t-1}; with
eta > 0 a DDIM step is Gaussian, so each step has a log-probability and the
chain can be trained with an importance-sampled, clipped policy gradient.

The scheduler is used by duck typing (a diffusers ``DDIMScheduler`` or any
object with the same fields): this module imports torch and numpy only.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Sequence

import numpy as np
import torch

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape [B] (or a scalar) to broadcast over ``like`` [B, ...]."""
    return values.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def _alphas(scheduler: Any, timestep: torch.Tensor | int, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """abar_t and abar_prev for a scalar or per-sample timestep, shaped to broadcast over ``sample``."""
    if scheduler.num_inference_steps is None:
        raise ValueError("ddim_step_with_logprob: call scheduler.set_timesteps(num_steps) before stepping")
    t = torch.as_tensor(timestep, device="cpu").long().reshape(-1)
    abar = scheduler.alphas_cumprod.to("cpu")
    total = scheduler.config.num_train_timesteps
    t_prev = t - total // scheduler.num_inference_steps
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=abar.dtype)
    abar_t = abar.gather(0, t.clamp(0, total - 1))
    # clamp(t_prev, 0, T-1) as in ALGORITHMS.md; a negative t_prev takes final_alpha_cumprod, which
    # equals abar[0] under set_alpha_to_one=False and is 1.0 otherwise (as diffusers does)
    abar_prev = torch.where(t_prev >= 0, abar.gather(0, t_prev.clamp(0, total - 1)), final)
    return _per_sample(abar_t, sample).to(sample.device), _per_sample(abar_prev, sample).to(sample.device)


def _predict_x0_eps(scheduler: Any, model_output, sample, abar_t) -> tuple[torch.Tensor, torch.Tensor]:
    beta_t = 1 - abar_t
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        x0, eps = (sample - beta_t**0.5 * model_output) / abar_t**0.5, model_output
    elif kind == "sample":
        x0 = model_output
        eps = (sample - abar_t**0.5 * x0) / beta_t**0.5
    elif kind == "v_prediction":
        x0 = abar_t**0.5 * sample - beta_t**0.5 * model_output
        eps = abar_t**0.5 * model_output + beta_t**0.5 * sample
    else:
        raise ValueError(
            f"scheduler.config.prediction_type must be 'epsilon', 'sample' or 'v_prediction', got {kind!r}"
        )
    if getattr(scheduler.config, "thresholding", False):
        raise ValueError(
            "scheduler.config.thresholding=True has no Gaussian log-probability here; use a scheduler without it"
        )
    if getattr(scheduler.config, "clip_sample", False):
        bound = scheduler.config.clip_sample_range
        x0 = x0.clamp(-bound, bound)
    return x0, eps


def ddim_step_with_logprob(
    scheduler: Any,
    model_output: torch.Tensor,
    timestep: torch.Tensor | int,
    sample: torch.Tensor,
    eta: float = 1.0,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step x_t -> x_{t-1} and its Gaussian log-probability per sample [B].

    ALGORITHMS.md §4 / DDIM (Song et al. 2021, eq. 12 and 16)::

        x0     = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
        sigma  = eta sqrt((1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev))
        mu     = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps
        x_prev = mu + sigma z                     (or the given ``prev_sample``)
        logp   = mean over non-batch dims of N(x_prev; mu, sigma^2) log-density

    ``timestep`` may be an int or a [B] tensor of per-sample timesteps. When
    ``prev_sample`` is given the step is evaluated, not sampled (DDPO's
    training pass re-scores the stored chain). ``noise`` supplies z directly
    (a batch of chains that each draw from their own generator); otherwise z
    is drawn from ``generator``.
    """
    if not eta > 0:
        raise ValueError(
            f"ddim_step_with_logprob: eta must be > 0 (got {eta}); eta = 0 is deterministic DDIM and "
            "has no log-probability. Set sampler.eta to e.g. 1.0"
        )
    abar_t, abar_prev = _alphas(scheduler, timestep, sample)
    if abar_t.shape[0] not in (1, sample.shape[0]):
        raise ValueError(
            f"ddim_step_with_logprob: {abar_t.shape[0]} timesteps for a batch of {sample.shape[0]} samples"
        )
    x0, eps = _predict_x0_eps(scheduler, model_output, sample, abar_t)

    variance = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)
    std = eta * variance**0.5
    if bool((std <= 0).any()):
        raise ValueError(
            "ddim_step_with_logprob: sigma is 0 at this step (scheduler.config.set_alpha_to_one=True makes the "
            "last step deterministic); use set_alpha_to_one=False as Stable Diffusion does"
        )
    mean = abar_prev**0.5 * x0 + (1 - abar_prev - std**2) ** 0.5 * eps

    if prev_sample is None:
        if noise is None:
            # drawn on the generator's device (a cuda generator cannot fill a CPU tensor), used on the output's
            noise = torch.randn(model_output.shape, generator=generator, dtype=model_output.dtype,
                                device=generator.device if generator is not None else "cpu")
        prev_sample = mean + std * noise.to(model_output.device)

    log_prob = -((prev_sample.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - LOG_SQRT_2PI
    log_prob = log_prob.mean(dim=tuple(range(1, log_prob.dim())))
    return prev_sample.type(sample.dtype), log_prob


def ddpo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_range: float = 1e-4,
    adv_clip_max: float = 5.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DDPO-IS clipped loss for one timestep over a batch [B] (Black et al. 2023, eq. 4)::

        rho  = exp(logp_new - logp_old)
        A    = clip(A, -adv_clip_max, adv_clip_max)
        loss = mean(max(-A rho, -A clip(rho, 1 - eps, 1 + eps)))

    Stats: ``approx_kl`` = 0.5 mean((logp_new - logp_old)^2), ``clip_fraction``
    = mean(|rho - 1| > eps).
    """
    if not clip_range > 0:
        raise ValueError(f"ddpo_loss: clip_range must be > 0, got {clip_range}")
    if not (log_probs.shape == old_log_probs.shape == advantages.shape):
        raise ValueError(
            f"ddpo_loss: log_probs, old_log_probs and advantages must share a shape, got {tuple(log_probs.shape)}, "
            f"{tuple(old_log_probs.shape)}, {tuple(advantages.shape)}"
        )
    adv = advantages.detach().clamp(-adv_clip_max, adv_clip_max)
    delta = log_probs - old_log_probs.detach()
    ratio = torch.exp(delta)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        stats = {
            "approx_kl": 0.5 * (delta**2).mean(),
            "clip_fraction": ((ratio - 1.0).abs() > clip_range).float().mean(),
        }
    return loss, stats


class PerPromptStatTracker:
    """Per-prompt reward normalisation for DDPO advantages (Black et al. 2023, §5).

    Each prompt keeps its last ``buffer_size`` rewards. New rewards are
    appended first; a prompt with fewer than ``min_count`` stored rewards is
    normalised with the whole batch's mean and std instead.
    A = (r - mean) / (std + 1e-6), population std.
    """

    def __init__(self, buffer_size: int, min_count: int):
        if buffer_size < 1 or min_count < 1:
            raise ValueError(
                f"PerPromptStatTracker: buffer_size and min_count must be >= 1, got {buffer_size}, {min_count}"
            )
        if min_count > buffer_size:
            raise ValueError(
                f"PerPromptStatTracker: min_count ({min_count}) > buffer_size ({buffer_size}) would never use "
                "per-prompt statistics"
            )
        self.buffer_size = buffer_size
        self.min_count = min_count
        self._history: dict[str, deque[float]] = {}

    def update(self, prompts: Sequence[str], rewards: Sequence[float] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Record ``rewards`` and return their advantages [N] (float64, in input order)."""
        r = np.asarray(rewards.cpu() if isinstance(rewards, torch.Tensor) else rewards, dtype=np.float64)
        if r.ndim != 1 or len(prompts) != len(r):
            raise ValueError(
                f"PerPromptStatTracker.update: need one reward per prompt, got {len(prompts)} prompts and "
                f"rewards of shape {r.shape}"
            )
        prompt_arr = np.asarray(prompts, dtype=object)
        advantages = np.empty_like(r)
        batch_mean, batch_std = r.mean(), r.std()
        for prompt in dict.fromkeys(prompts):  # first-seen order
            idx = prompt_arr == prompt
            history = self._history.setdefault(prompt, deque(maxlen=self.buffer_size))
            history.extend(r[idx].tolist())
            if len(history) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                stored = np.fromiter(history, dtype=np.float64)
                mean, std = stored.mean(), stored.std()
            advantages[idx] = (r[idx] - mean) / (std + 1e-6)
        return torch.from_numpy(advantages)

    def state_dict(self) -> dict[str, list[float]]:
        """Stored rewards per prompt, for exact resume."""
        return {prompt: list(history) for prompt, history in self._history.items()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        """Restore what ``state_dict`` saved."""
        self._history = {p: deque(v, maxlen=self.buffer_size) for p, v in state.items()}
