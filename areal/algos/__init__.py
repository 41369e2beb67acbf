"""Pure tensor functions for the RL algorithms (ALGORITHMS.md §2-4, §6)."""

from areal.algos.advantages import (
    ADVANTAGE_ESTIMATORS,
    dr_grpo_advantages,
    gae_advantages,
    grpo_advantages,
    make_advantage_estimator,
    reinforce_pp_advantages,
    rloo_advantages,
    zero_variance_groups,
)
from areal.algos.ddpo import PerPromptStatTracker, ddim_step_with_logprob, ddpo_loss
from areal.algos.logprobs import chunked_logprobs_entropy, chunked_token_logprobs
from areal.algos.ppo import decoupled_ppo_loss, ppo_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "PerPromptStatTracker",
    "chunked_logprobs_entropy",
    "chunked_token_logprobs",
    "ddim_step_with_logprob",
    "ddpo_loss",
    "decoupled_ppo_loss",
    "dr_grpo_advantages",
    "gae_advantages",
    "grpo_advantages",
    "make_advantage_estimator",
    "ppo_loss",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "zero_variance_groups",
]
