"""RL algorithm settings (``algo.*``): staleness, advantages and the PPO objective."""

from __future__ import annotations

from dataclasses import dataclass

from areal.config._checks import require

ADVANTAGES = ("grpo", "dr_grpo", "rloo", "reinforce_pp")
# as areal.algos.loss_terms names them (the config imports no torch)
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
WEIGHT_MODES = ("drop", "truncate")
WEIGHT_LEVELS = ("token", "sequence")
KL_ESTIMATORS = ("k1", "k2", "k3")


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
    loss_agg: str = "token-mean"
    """How per-token losses make a minibatch's loss (ALGORITHMS.md §6): token-mean (every scored token alike),
    seq-mean-token-mean (each sequence's mean, averaged: GRPO's paper), seq-mean-token-sum (each sequence's sum,
    averaged), seq-mean-token-sum-norm (the sum over S sequences divided by S x algo.loss_norm_tokens: Dr.GRPO).
    The counts are the whole minibatch's, over micro-batches and data-parallel ranks."""
    loss_norm_tokens: int = 0
    """T of seq-mean-token-sum-norm; 0 = rollout.max_new_tokens (the token budget)."""
    behavior_weight_mode: str = "drop"
    """What a behaviour weight pi_prox / pi_behav past algo.behavior_weight_cap does: drop (the token, or the
    sequence, carries no loss) or truncate (weighted at the cap: truncated importance sampling, TIS)."""
    behavior_weight_level: str = "token"
    """token: a weight per token; sequence: exp(sum of the sequence's log-ratios) on all its tokens (dropped when
    outside [1/cap, cap])."""
    kl_coef: float = 0.0
    """Weight of the KL divergence to the reference policy (the starting model; with LoRA, the base with the
    adapters disabled); 0 = off, and then no reference pass at all."""
    kl_estimator: str = "k3"
    """Estimator of KL(pi || pi_ref) per token: k1 (log-ratio), k2 (half its square), k3 (exp(-d) + d - 1,
    clamped: verl's low_var_kl). Logged as learner/kl_ref."""
    kl_in: str = "loss"
    """Where the KL goes: loss (kl_coef x AGG(k), with algo.loss_agg) or reward (each token's reward minus
    kl_coef x k1 of the sampled token, summed into the advantages of the tokens before it: PPO/REINFORCE++)."""
    entropy_coef: float = 0.0
    """Entropy bonus: the loss minus this times AGG(H), H the policy's entropy per scored token (whole
    vocabulary, at the sampling temperature). learner/entropy is logged whatever this is."""
    mask_truncated: bool = False
    """A completion ended by the token budget (rollout.max_new_tokens), not by EOS or a stop string, trains with
    loss mask 0; its reward still counts in its group's advantage statistics (TRL's mask_truncated_completions)."""

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
        require(self.loss_agg in LOSS_AGG_MODES, "algo.loss_agg", self.loss_agg, f"one of {', '.join(LOSS_AGG_MODES)}")
        require(self.kl_estimator in KL_ESTIMATORS, "algo.kl_estimator", self.kl_estimator, "k1, k2 or k3")
        require(self.kl_in in ("loss", "reward"), "algo.kl_in", self.kl_in, "loss or reward")
        require(self.behavior_weight_mode in WEIGHT_MODES, "algo.behavior_weight_mode", self.behavior_weight_mode,
                "drop or truncate")
        require(self.behavior_weight_level in WEIGHT_LEVELS, "algo.behavior_weight_level", self.behavior_weight_level,
                "token or sequence")
