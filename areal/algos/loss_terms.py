"""The terms reasoning-RL recipes add to the policy loss (ALGORITHMS.md §6): how per-token losses are aggregated
over a minibatch, how the engine/trainer mismatch weight is applied, and Schulman's KL estimators.

Pure functions over [B, T] tensors (B sequences, T token positions, mask M). Aggregation takes the minibatch's
totals (its sequence count S, its token count, the Dr.GRPO constant) from the caller, so a minibatch split into
micro-batches, or over data-parallel ranks, sums to exactly the same loss and gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
WEIGHT_MODES = ("drop", "truncate")
WEIGHT_LEVELS = ("token", "sequence")
KL_ESTIMATORS = ("k1", "k2", "k3")


@dataclass(frozen=True)
class MinibatchTotals:
    """What the aggregation divides by: the whole minibatch's sequences (S) and scored tokens, and T for
    seq-mean-token-sum-norm; summed over micro-batches and data-parallel ranks by the caller."""

    sequences: float
    tokens: float
    norm_tokens: float = 1.0

    @classmethod
    def of(cls, mask: torch.Tensor, norm_tokens: float = 1.0) -> MinibatchTotals:
        """The totals of one [B, T] mask (a minibatch held whole)."""
        return cls(float(mask.shape[0]), float(mask.sum()), float(norm_tokens))


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str, totals: MinibatchTotals) -> torch.Tensor:
    """AGG(L) of ALGORITHMS.md §6 for this part of a minibatch (its share of the minibatch's value)::

        token-mean               sum_{s,t} M L / sum_{s,t} M
        seq-mean-token-mean      (1/S) sum_s [ sum_t M L / max(1, sum_t M) ]
        seq-mean-token-sum       (1/S) sum_s [ sum_t M L ]
        seq-mean-token-sum-norm  sum_{s,t} M L / (S * T)

    with S, sum M and T taken from ``totals`` (the whole minibatch's), so the parts of a minibatch add up to
    its aggregate. A sequence is never split between parts (its per-sequence mean needs all its tokens).
    """
    m = mask.to(per_token.dtype)
    masked = per_token * m
    if mode == "token-mean":
        return masked.sum() / max(totals.tokens, 1.0)
    if mode == "seq-mean-token-mean":
        return (masked.sum(dim=-1) / m.sum(dim=-1).clamp_min(1)).sum() / max(totals.sequences, 1.0)
    if mode == "seq-mean-token-sum":
        return masked.sum() / max(totals.sequences, 1.0)
    if mode == "seq-mean-token-sum-norm":
        return masked.sum() / (max(totals.sequences, 1.0) * totals.norm_tokens)
    raise ValueError(f"aggregate: mode must be one of {', '.join(LOSS_AGG_MODES)}, got {mode!r}")


def behavior_weights(proximal: torch.Tensor, behavior: torch.Tensor, mask: torch.Tensor, cap: float | None,
                     mode: str = "drop", level: str = "token") -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, keep) [B, T] correcting the gap between the policy that sampled (``behavior``) and the
    trainer's proximal one (ALGORITHMS.md §2, §6), in at least float32, non-finite weights -> 0.

    token level:     w_t = exp(lp - lb); drop: keep = M and w_t <= cap; truncate: w_t = min(w_t, cap) (TIS)
    sequence level:  w_s = exp(sum_t M (lp - lb)) on every token of s; drop: keep = M and 1/cap <= w_s <= cap;
                     truncate: w_s = min(w_s, cap)
    ``cap=None`` keeps every token at its full weight.
    """
    if mode not in WEIGHT_MODES:
        raise ValueError(f"behavior_weights: mode must be drop or truncate, got {mode!r}")
    if level not in WEIGHT_LEVELS:
        raise ValueError(f"behavior_weights: level must be token or sequence, got {level!r}")
    if cap is not None and not cap > 0:
        raise ValueError(f"behavior_weights: cap must be > 0 (or None), got {cap}")
    dtype = torch.promote_types(proximal.dtype, torch.float32)  # bf16 differences overflow exp
    log_w = (proximal.detach().to(dtype) - behavior.detach().to(dtype))
    keep = mask.bool()
    if level == "sequence":
        log_w = (log_w * keep).sum(dim=-1, keepdim=True).expand_as(log_w)
    weight = torch.exp(log_w)
    weight = torch.where(torch.isfinite(weight), weight, torch.zeros_like(weight))
    if cap is None:
        return weight, keep
    if mode == "truncate":
        return torch.clamp(weight, max=cap), keep
    inside = weight <= cap
    if level == "sequence":
        inside = inside & (weight >= 1.0 / cap)
    return weight, keep & inside


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from d = lt - lr (Schulman's k1, k2, k3)::

        k1 = d
        k2 = d^2 / 2
        k3 = exp(clamp(-d, -20, 20)) + d - 1, clamped to [-10, 10]     (verl's low_var_kl)

    The gradient flows through ``logprobs``; ``ref_logprobs`` is a frozen policy's.
    """
    d = logprobs - ref_logprobs.detach()
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        return torch.clamp(torch.exp(torch.clamp(-d, -20.0, 20.0)) + d - 1.0, -10.0, 10.0)
    raise ValueError(f"kl_penalty: estimator must be one of {', '.join(KL_ESTIMATORS)}, got {estimator!r}")


def kl_in_reward(advantages: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                 coef: float) -> torch.Tensor:
    """Advantages with the KL as a token reward (ALGORITHMS.md §6: r_t -= kl_coef * k1_t): with returns summed
    to the end of the sequence (no discount), each scored token's advantage loses kl_coef times the k1 of
    itself and of every scored token after it::

        A'_t = A_t - coef * sum_{t' >= t} M_t' (l_t' - lr_t')
    """
    m = mask.to(advantages.dtype)
    k1 = (logprobs.detach() - ref_logprobs.detach()).to(advantages.dtype) * m
    to_go = k1.flip(-1).cumsum(-1).flip(-1)
    return advantages - coef * to_go * m
