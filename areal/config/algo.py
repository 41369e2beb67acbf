"""RL algorithm settings (``algo.*``): staleness, advantages and the PPO objective."""

from __future__ import annotations

from dataclasses import dataclass

from areal.config._checks import require

ADVANTAGES = ("grpo", "dr_grpo", "rloo", "reinforce_pp")


@dataclass
class AlgoConfig:
    """Staleness-aware PPO / GRPO family (ALGORITHMS.md §1-3)."""

    max_staleness: int = 4
    """eta: how many versions older than the trainer a trained rollout may be (0 = synchronous)."""
    advantage: str = "grpo"
    """Advantage estimator: grpo, dr_grpo, rloo or reinforce_pp."""
    decoupled: bool = True
    """Clip against the proximal policy and weight by pi_prox / pi_behav (AReaL); False = plain PPO."""
    eps_clip: float = 0.2
    """PPO clip range (low side, and high side unless eps_clip_high is set)."""
    eps_clip_high: float | None = None
    """Upper clip range (DAPO clip-higher); None = eps_clip."""
    dual_clip: float | None = None
    """Dual-clip bound c > 1 for negative advantages; None = off."""
    behavior_weight_cap: float | None = 5.0
    """Drop tokens whose pi_prox / pi_behav exceeds this; None = keep all."""
    level: str = "token"
    """Importance ratio per token, or per sequence (GSPO)."""
    filter_zero_variance: bool = True
    """Drop groups whose rewards are all equal (no signal; DAPO dynamic sampling)."""

    def __post_init__(self):
        require(self.max_staleness >= 0, "algo.max_staleness", self.max_staleness, "an int >= 0 (0 = synchronous)")
        require(self.advantage in ADVANTAGES, "algo.advantage", self.advantage, f"one of {', '.join(ADVANTAGES)}")
        require(self.eps_clip > 0, "algo.eps_clip", self.eps_clip, "a positive float")
        require(self.eps_clip_high is None or self.eps_clip_high > 0, "algo.eps_clip_high", self.eps_clip_high,
                "null or a positive float")
        require(self.dual_clip is None or self.dual_clip > 1, "algo.dual_clip", self.dual_clip, "null or > 1")
        require(self.behavior_weight_cap is None or self.behavior_weight_cap > 0, "algo.behavior_weight_cap",
                self.behavior_weight_cap, "null or a positive float")
        require(self.level in ("token", "sequence"), "algo.level", self.level, "'token' or 'sequence'")
