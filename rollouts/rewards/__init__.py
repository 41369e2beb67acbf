"""Rewards: what one reward computation produced (``outcome``), the reward functions a task combines (built-ins,
``package.module:function`` of your own, TRL- and verl-style), and how they are resolved and called (``suite``)."""

from rollouts.rewards.outcome import FAILURE_STATUSES, RewardOutcome, failure_info, outcome_of

__all__ = ["FAILURE_STATUSES", "RewardOutcome", "failure_info", "outcome_of"]
