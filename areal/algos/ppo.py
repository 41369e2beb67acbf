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

from areal.algos.loss_terms import MinibatchTotals, aggregate, behavior_weights

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
    behavior_weight_mode: str = "drop",
    behavior_weight_level: str = "token",
    level: Level = "token",
    loss_agg: str = "token-mean",
    totals: MinibatchTotals | None = None,
    denominator: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Decoupled PPO objective over [B, T] tokens (ALGORITHMS.md §2).

    Token level::

        r    = exp(lt - lp)
        pg   = max(-A r, -A clip(r, 1 - eps, 1 + eps_high))
        pg   = min(pg, c |A|)                      (dual clip, c > 1)
        w    = exp(lp - lb)                        (>= fp32, non-finite -> 0)
        keep = M and w <= cap                      (cap optional; dropped, not clipped)
        loss = AGG(pg w keep)                      (token-mean: sum / count(M))

    ``level="sequence"`` (GSPO) replaces r and A by their masked per-sequence
    means (r_s = exp(mean_t(lt - lp)), A_s = mean_t A). The weight is applied
    per ``behavior_weight_level`` and ``behavior_weight_mode`` (drop, or truncate
    at the cap: TIS; ``loss_terms.behavior_weights``), and the per-token losses
    aggregated by ``loss_agg`` over ``totals``, the whole minibatch's counts
    (``loss_terms.aggregate``; default: this batch's). ``denominator`` is
    token-mean with a constant denominator (e.g. batch * max_len).

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

    weight, keep = behavior_weights(proximal_logprobs, behavior_logprobs, mask, behavior_weight_cap,
                                    behavior_weight_mode, behavior_weight_level)
    bool_mask = mask.bool()
    token_loss = pg * weight.to(pg.dtype) * keep.to(pg.dtype)
    n_tokens = bool_mask.sum()
    if denominator is not None:
        loss_agg, totals = "token-mean", MinibatchTotals(float(mask.shape[0]), float(denominator))
    loss = aggregate(token_loss, bool_mask, loss_agg, totals or MinibatchTotals.of(mask))

    with torch.no_grad():
        count = n_tokens.clamp_min(1).float()
        lr = (logprobs - proximal_logprobs).float()
        k3 = (torch.exp(lr) - 1.0) - lr
        dropped = (bool_mask & ~keep).sum()
        capped = behavior_weight_cap is not None and behavior_weight_mode == "truncate"
        truncated = (bool_mask & (weight >= behavior_weight_cap)).sum() if capped else dropped * 0
        stats = {
            "token_loss": token_loss.detach(),
            "behavior_weight": weight,
            "clip_fraction": (clip_hit & bool_mask).sum().float() / count,
            "dual_clip_fraction": (dual_hit & bool_mask).sum().float() / count,
            "dropped_by_cap": dropped,
            "dropped_fraction": dropped.float() / count,
            "weight_truncated_fraction": truncated.float() / count,
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

