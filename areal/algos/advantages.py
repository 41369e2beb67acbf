"""Advantage estimators, ALGORITHMS.md §3.

Outcome-reward estimators take a group reward matrix ``rewards`` [G, n]
(G prompts, n samples each) and a response mask [G*n, T] (rows ordered prompt
by prompt) and return per-token advantages [G*n, T]. They are registered in
``ADVANTAGE_ESTIMATORS`` by config name, so the learner never branches on the
algorithm. GAE needs a value head and has its own entry point.

Groups may be ragged: ``valid`` [G, n] marks the samples whose reward exists (a
failed reward is not a score). Each estimator then treats a group as its valid
samples alone (means, stds and leave-one-out baselines over them, whitening
over their tokens) and gives the others zero advantage; with every sample
valid the result is the plain estimator's.
"""

from __future__ import annotations

from typing import Callable

import torch

GROUP_EPS = 1e-6


def _check_group(rewards: torch.Tensor, mask: torch.Tensor | None, name: str, min_n: int = 1) -> None:
    if rewards.dim() != 2:
        raise ValueError(f"{name}: rewards must be [groups, samples_per_group], got shape {tuple(rewards.shape)}")
    if rewards.shape[1] < min_n:
        raise ValueError(
            f"{name}: needs at least {min_n} samples per group (rollout.samples_per_prompt), got {rewards.shape[1]}"
        )
    if mask is not None and (mask.dim() != 2 or mask.shape[0] != rewards.numel()):
        raise ValueError(
            f"{name}: mask must be [groups*samples, tokens] = [{rewards.numel()}, T], got {tuple(mask.shape)}"
        )


def valid_rewards(rewards: torch.Tensor, valid: torch.Tensor | None, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards [G, n] float32 with 0 where not valid, valid [G, n] bool); ``valid`` None = all valid.

    Rewards must be finite where valid: a failed reward is marked by ``valid`` (it is NaN in a Trajectory).
    """
    if valid is None:
        valid = torch.ones_like(rewards, dtype=torch.bool)
    if valid.shape != rewards.shape:
        raise ValueError(f"{name}: valid must match rewards [groups, samples] = {tuple(rewards.shape)}, got "
                         f"{tuple(valid.shape)}")
    valid = valid.to(torch.bool)
    if not torch.isfinite(rewards[valid]).all():
        raise ValueError(f"{name}: rewards must be finite where valid (mark failed rewards valid=False), got "
                         f"{rewards[valid & ~torch.isfinite(rewards)].tolist()}")
    return torch.where(valid, rewards.to(torch.float32), 0.0), valid


def broadcast_to_tokens(seq_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Copy one value per sequence [N] (or [G, n]) onto its masked tokens: [N, T]."""
    return seq_values.reshape(-1, 1).to(torch.float32) * mask.to(torch.float32)


def _centred(r: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(r - mean over each group's valid samples, zero elsewhere; valid count per group [G, 1])."""
    count = valid.sum(dim=1, keepdim=True)
    mean = r.sum(dim=1, keepdim=True) / count.clamp_min(1)
    return (r - mean) * valid, count


def grpo_advantages(rewards: torch.Tensor, mask: torch.Tensor, *, valid: torch.Tensor | None = None) -> torch.Tensor:
    """GRPO: A = (r - mean_group) / (std_group + 1e-6), std with Bessel's correction (torch default).

    Over each group's valid samples; a group with one valid sample has nothing to compare with (A = 0).
    """
    _check_group(rewards, mask, "grpo_advantages", min_n=2)
    r, valid = valid_rewards(rewards, valid, "grpo_advantages")
    centred, count = _centred(r, valid)
    std = ((centred**2).sum(dim=1, keepdim=True) / (count - 1).clamp_min(1)).sqrt()
    return broadcast_to_tokens(centred / (std + GROUP_EPS), mask)


def dr_grpo_advantages(rewards: torch.Tensor, mask: torch.Tensor, *, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Dr.GRPO (Liu et al. 2025): A = r - mean_group, no std division (over each group's valid samples).

    Its token-sum normalisation is the loss's ``denominator`` (a constant such
    as batch * max_new_tokens), not part of the advantage.
    """
    _check_group(rewards, mask, "dr_grpo_advantages")
    r, valid = valid_rewards(rewards, valid, "dr_grpo_advantages")
    return broadcast_to_tokens(_centred(r, valid)[0], mask)


def rloo_advantages(rewards: torch.Tensor, mask: torch.Tensor, *, valid: torch.Tensor | None = None) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): A_i = r_i - mean_{j != i} r_j = k/(k-1) (r_i - mean), over the k valid
    samples of the group; a group with one valid sample has no baseline (A = 0)."""
    _check_group(rewards, mask, "rloo_advantages", min_n=2)
    r, valid = valid_rewards(rewards, valid, "rloo_advantages")
    count = valid.sum(dim=1, keepdim=True)
    baseline = (r.sum(dim=1, keepdim=True) - r) / (count - 1).clamp_min(1)
    return broadcast_to_tokens(torch.where(valid & (count >= 2), r - baseline, 0.0), mask)


def outcome_token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place each sequence's scalar reward [N] on its last masked token: [N, T]."""
    m = mask.to(torch.float32)
    out = torch.zeros_like(m)
    lengths = m.sum(dim=1)
    has_tokens = lengths > 0
    # index of the last True in each row (rows may be left- or right-padded)
    positions = torch.arange(m.shape[1], device=m.device).expand_as(m)
    last = torch.where(m > 0, positions, torch.full_like(positions, -1)).max(dim=1).values
    rows = torch.nonzero(has_tokens).squeeze(-1)
    out[rows, last[rows]] = rewards.reshape(-1).to(torch.float32)[rows]
    return out


def discounted_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = sum_{k >= t} gamma^(k-t) r_k over masked tokens, per row: [N, T]."""
    m = mask.to(torch.float32)
    returns = torch.zeros_like(token_rewards, dtype=torch.float32)
    running = torch.zeros(token_rewards.shape[0], dtype=torch.float32, device=token_rewards.device)
    for t in range(token_rewards.shape[1] - 1, -1, -1):
        # a masked position (padding, tool output) passes the future through untouched
        running = torch.where(m[:, t] > 0, token_rewards[:, t].float() + gamma * running, running)
        returns[:, t] = running * m[:, t]
    return returns


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / (std + eps) over masked entries (population std); zeros elsewhere."""
    m = mask.to(torch.float32)
    count = m.sum().clamp_min(1)
    mean = (values * m).sum() / count
    var = (((values - mean) * m) ** 2).sum() / count
    return (values - mean) / (var.sqrt() + eps) * m


def reinforce_pp_advantages(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, *,
                            valid: torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE++ (Hu 2025): token returns-to-go, whitened over every masked token of the valid samples."""
    _check_group(rewards, mask, "reinforce_pp_advantages")
    r, valid = valid_rewards(rewards, valid, "reinforce_pp_advantages")
    mask = mask.to(torch.float32) * valid.reshape(-1, 1)
    returns = discounted_returns(outcome_token_rewards(r, mask), mask, gamma)
    return masked_whiten(returns, mask)


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al. 2016) over [N, T] token rewards and values; returns (advantages, returns).

    delta_t = r_t + gamma V_{t+1} - V_t and A_t = delta_t + gamma lam A_{t+1},
    where V and A past a row's last masked token are 0.
    """
    if not (rewards.shape == values.shape == mask.shape) or rewards.dim() != 2:
        raise ValueError(
            f"gae_advantages: rewards, values and mask must share one [N, T] shape, got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    m = mask.to(torch.float32)
    r, v = rewards.float() * m, values.float() * m
    adv = torch.zeros_like(r)
    next_value = torch.zeros(r.shape[0], dtype=torch.float32, device=r.device)
    next_adv = torch.zeros_like(next_value)
    for t in range(r.shape[1] - 1, -1, -1):
        delta = r[:, t] + gamma * next_value - v[:, t]
        a = (delta + gamma * lam * next_adv) * m[:, t]
        adv[:, t] = a
        # a masked (padding) position passes the future through untouched
        next_value = torch.where(m[:, t] > 0, v[:, t], next_value)
        next_adv = torch.where(m[:, t] > 0, a, next_adv)
    return adv, (adv + v) * m


def zero_variance_groups(rewards: torch.Tensor, atol: float = 0.0) -> torch.Tensor:
    """Boolean [G]: groups whose rewards are all equal (max - min <= atol) carry no signal (DAPO)."""
    _check_group(rewards, None, "zero_variance_groups")
    return (rewards.max(dim=1).values - rewards.min(dim=1).values) <= atol


AdvantageEstimator = Callable[..., torch.Tensor]  # (rewards [G, n], mask [G*n, T], *, valid [G, n]) -> [G*n, T]

ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
}


def make_advantage_estimator(name: str) -> AdvantageEstimator:
    """Look up an outcome-reward estimator by its config name (``algo.advantage``)."""
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        raise ValueError(
            f"algo.advantage: unknown estimator {name!r}; choose one of {sorted(ADVANTAGE_ESTIMATORS)}"
        ) from None
