"""What reward functions are given: one completion as scored (``RewardInput``), the settings built-in rewards
read from the config (``RewardSettings``), the run's progress (``RewardState``, TRL's ``trainer_state``).

Two shapes of reward function run in the reward processes (``rollouts.reward_pool``):

- per sample, ``fn(output, sample) -> float | None``: each completion scored alone, each under its own
  timeout (the built-ins but ``http``, verl-style ``compute_score`` functions, a task's own ``score``);
- batched, one call per group: TRL-style ``fn(prompts, completions, **kwargs) -> list[float | None]`` and the
  ``http`` reward server.

``None`` means "does not apply to this sample" (it counts as 0 in the weighted sum, as in TRL); an exception,
a timeout, NaN or a non-number fails the sample.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RewardInput:
    """One completion as the rewards see it: its text, its token ids and why generation stopped ("stop": EOS or
    a stop string; "length": the token budget ran out)."""

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: str = ""


@dataclass(frozen=True)
class RewardSettings:
    """The ``task.*`` and ``rollout.*`` values built-in rewards read (picklable: it travels to reward processes)."""

    max_new_tokens: int = 256
    """rollout.max_new_tokens: soft_overlong's budget Lmax."""
    overlong_buffer: int = 64
    """task.overlong_buffer: soft_overlong's buffer Lc (tokens before the budget where the penalty ramps)."""
    tests_key: str = "tests"
    """task.tests_key: the column holding code_tests' assert statements."""
    code_wall_seconds: float = 8.0
    """Wall clock of one code_tests program in the sandbox (kept below task.reward_timeout_s)."""
    url: str = ""
    """task.reward_url: where the http reward POSTs a group."""
    http_timeout_s: float = 5.0
    """task.reward_http_timeout_s: one HTTP attempt's timeout."""
    http_retries: int = 2
    """task.reward_http_retries: further attempts after a failed one (server error, timeout, connection)."""


@dataclass(frozen=True)
class RewardState:
    """Passed to TRL-style functions as ``trainer_state``: how far the run is (TRL passes transformers'
    TrainerState; these are the fields reward shaping reads)."""

    global_step: int = 0
    """The policy version that started the group being scored."""
    max_steps: int = 0
    """total_steps of the run."""


class RewardTimeout(Exception):
    """Raised by a reward that gave up waiting (the http reward after its retries): the sample fails with status
    timeout, not error."""
