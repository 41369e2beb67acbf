"""Advantage estimators, ALGORITHMS.md §3.

Outcome-reward estimators take a group reward matrix ``rewards`` [G, n]
(G prompts, n samples each) and a response mask [G*n, T] (rows ordered prompt
by prompt) and return per-token advantages [G*n, T]. They are registered in
``ADVANTAGE_ESTIMATORS`` by config name, so the learner never branches on the
algorithm. GAE needs a value head and has its own entry point.
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


def broadcast_to_tokens(seq_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Copy one value per sequence [N] (or [G, n]) onto its masked tokens: [N, T]."""
    return seq_values.reshape(-1, 1).to(torch.float32) * mask.to(torch.float32)


def grpo_advantages(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GRPO: A = (r - mean_group) / (std_group + 1e-6), std with Bessel's correction (torch default)."""
    _check_group(rewards, mask, "grpo_advantages", min_n=2)
    r = rewards.to(torch.float32)
    adv = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + GROUP_EPS)
    return broadcast_to_tokens(adv, mask)


def dr_grpo_advantages(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Dr.GRPO (Liu et al. 2025): A = r - mean_group, no std division.

    Its token-sum normalisation is the loss's ``denominator`` (a constant such
    as batch * max_new_tokens), not part of the advantage.
    """
    _check_group(rewards, mask, "dr_grpo_advantages")
    r = rewards.to(torch.float32)
    return broadcast_to_tokens(r - r.mean(dim=1, keepdim=True), mask)


def rloo_advantages(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): A_i = r_i - mean_{j != i} r_j = n/(n-1) (r_i - mean)."""
    _check_group(rewards, mask, "rloo_advantages", min_n=2)
    r = rewards.to(torch.float32)
    n = r.shape[1]
    baseline = (r.sum(dim=1, keepdim=True) - r) / (n - 1)
    return broadcast_to_tokens(r - baseline, mask)


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


def reinforce_pp_advantages(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """REINFORCE++ (Hu 2025): token returns-to-go, whitened over every masked token of the batch."""
    _check_group(rewards, mask, "reinforce_pp_advantages")
    returns = discounted_returns(outcome_token_rewards(rewards, mask), mask, gamma)
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


AdvantageEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

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
