"""Decoupled (staleness-aware) PPO loss, AReaL §5.2; ALGORITHMS.md §2.

Three log-probabilities per token:

* behaviour ``lb``: from the engine that sampled the token (possibly stale),
* proximal ``lp``: recomputed with the weights at the start of the train step,
* current ``lt``: from the weights being optimised (carries the gradient).

The trust region is centred on the proximal policy; the gap between the
behaviour and proximal policies is corrected by the importance weight
``w = pi_prox / pi_behav``. With ``lp == lb`` (w = 1) this is plain PPO.
"""

from __future__ import annotations

from typing import Literal

import torch

Level = Literal["token", "sequence"]


def _check_inputs(tensors: dict[str, torch.Tensor], mask: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t.shape != mask.shape:
            raise ValueError(
                f"decoupled_ppo_loss: {name} has shape {tuple(t.shape)}, mask has {tuple(mask.shape)}; "
                "all inputs must be [batch, tokens]"
            )
    if mask.dim() != 2:
        raise ValueError(f"decoupled_ppo_loss: inputs must be [batch, tokens], got {mask.dim()} dims")


def _sequence_level(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked per-sequence mean of ``per_token`` [B, T], broadcast back to [B, T]."""
    count = mask.sum(dim=-1, keepdim=True).clamp_min(1)
    return ((per_token * mask).sum(dim=-1, keepdim=True) / count).expand_as(per_token)


def decoupled_ppo_loss(
    logprobs: torch.Tensor,
    proximal_logprobs: torch.Tensor,
    behavior_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_clip: float = 0.2,
    eps_clip_high: float | None = None,
    dual_clip: float | None = None,
    behavior_weight_cap: float | None = None,
    level: Level = "token",
    denominator: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Decoupled PPO objective over [B, T] tokens (ALGORITHMS.md §2).

    Token level::

        r    = exp(lt - lp)
        pg   = max(-A r, -A clip(r, 1 - eps, 1 + eps_high))
        pg   = min(pg, c |A|)                      (dual clip, c > 1)
        w    = exp(lp - lb)                        (>= fp32, non-finite -> 0)
        keep = M and w <= cap                      (cap optional; dropped, not clipped)
        loss = sum(pg w keep) / count(M)

    ``level="sequence"`` (GSPO) replaces r and A by their masked per-sequence
    means (r_s = exp(mean_t(lt - lp)), A_s = mean_t A); w, keep and the
    denominator stay per token. ``denominator`` overrides count(M) with a
    constant, for Dr.GRPO's token-sum normalisation (e.g. batch * max_len).

    Returns ``(loss, stats)``; stats are detached: ``token_loss`` [B, T],
    ``behavior_weight`` [B, T], and scalars ``clip_fraction``,
    ``dual_clip_fraction``, ``dropped_by_cap`` (count), ``dropped_fraction``,
    ``behavior_weight_mean``, ``approx_kl`` (k3 estimate of KL(prox || current)).
    """
    if level not in ("token", "sequence"):
        raise ValueError(f"decoupled_ppo_loss: level must be 'token' or 'sequence', got {level!r}")
    if not eps_clip > 0:
        raise ValueError(f"decoupled_ppo_loss: eps_clip must be > 0, got {eps_clip}")
    eps_high = eps_clip if eps_clip_high is None else eps_clip_high
    if not eps_high > 0:
        raise ValueError(f"decoupled_ppo_loss: eps_clip_high must be > 0, got {eps_clip_high}")
    if dual_clip is not None and not dual_clip > 1:
        raise ValueError(f"decoupled_ppo_loss: dual_clip must be > 1 (or None), got {dual_clip}")
    if behavior_weight_cap is not None and not behavior_weight_cap > 0:
        raise ValueError(f"decoupled_ppo_loss: behavior_weight_cap must be > 0 (or None), got {behavior_weight_cap}")
    if denominator is not None and not denominator > 0:
        raise ValueError(f"decoupled_ppo_loss: denominator must be > 0 (or None), got {denominator}")
    _check_inputs(
        {"logprobs": logprobs, "proximal_logprobs": proximal_logprobs,
         "behavior_logprobs": behavior_logprobs, "advantages": advantages},
        mask,
    )

    m = mask.to(logprobs.dtype)
    proximal_logprobs = proximal_logprobs.detach()
    log_ratio = (logprobs - proximal_logprobs) * m
    adv = advantages.detach().to(logprobs.dtype)
    if level == "sequence":
        log_ratio = _sequence_level(log_ratio, m)
        adv = _sequence_level(adv, m)
    ratio = torch.exp(log_ratio)

    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - eps_clip, 1.0 + eps_high)
    pg = torch.maximum(unclipped, clipped)
    clip_hit = clipped > unclipped
    dual_hit = torch.zeros_like(clip_hit)
    if dual_clip is not None:
        bound = dual_clip * adv.abs()
        dual_hit = pg > bound
        pg = torch.minimum(pg, bound)

    # at least fp32: bf16 logprob differences overflow exp and lose the weight's precision
    wdtype = torch.promote_types(proximal_logprobs.dtype, torch.float32)
    weight = torch.exp(proximal_logprobs.to(wdtype) - behavior_logprobs.detach().to(wdtype))
    weight = torch.where(torch.isfinite(weight), weight, torch.zeros_like(weight))
    bool_mask = mask.bool()
    keep = bool_mask
    if behavior_weight_cap is not None:
        keep = bool_mask & (weight <= behavior_weight_cap)

    token_loss = pg * weight.to(pg.dtype) * keep.to(pg.dtype)
    n_tokens = bool_mask.sum()
    denom = float(denominator) if denominator is not None else n_tokens.clamp_min(1).to(pg.dtype)
    loss = token_loss.sum() / denom

    with torch.no_grad():
        count = n_tokens.clamp_min(1).float()
        lr = (logprobs - proximal_logprobs).float()
        k3 = (torch.exp(lr) - 1.0) - lr
        dropped = (bool_mask & ~keep).sum()
        stats = {
            "token_loss": token_loss.detach(),
            "behavior_weight": weight,
            "clip_fraction": (clip_hit & bool_mask).sum().float() / count,
            "dual_clip_fraction": (dual_hit & bool_mask).sum().float() / count,
            "dropped_by_cap": dropped,
            "dropped_fraction": dropped.float() / count,
            "behavior_weight_mean": (weight * bool_mask).sum() / count,
            "approx_kl": (k3 * bool_mask).sum() / count,
        }
    return loss, stats


def ppo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    **kwargs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Plain PPO clipped loss: the decoupled loss with proximal == behaviour (w = 1)."""
    return decoupled_ppo_loss(logprobs, old_logprobs, old_logprobs, advantages, mask, **kwargs)

