"""Task settings (``task.*``): which prompts, which reward."""

from __future__ import annotations

from dataclasses import dataclass

from areal.config._checks import require

TASK_TYPES = ("arithmetic", "gsm8k")


@dataclass
class TaskConfig:
    """The dataset of prompts and its reward."""

    type: str = "arithmetic"
    """arithmetic (generated problems, exact-answer reward) or gsm8k (JSONL, math-verify reward)."""
    path: str = ""
    """gsm8k: path to a JSONL file with "question" and "answer" fields."""
    eval_path: str = ""
    """gsm8k: held-out JSONL; empty = hold out the last eval_size rows of path."""
    seed: int = 0
    """Problem generation and shuffling seed."""
    eval_size: int = 200
    """Held-out prompts scored at each evaluation."""
    reward_timeout_s: float = 10.0
    """A reward computation that takes longer scores 0 and is counted as a timeout."""

    def __post_init__(self):
        require(self.type in TASK_TYPES, "task.type", self.type, f"one of {', '.join(TASK_TYPES)}")
        require(self.type != "gsm8k" or bool(self.path), "task.path", self.path, "a JSONL file for task.type=gsm8k")
        require(self.eval_size >= 1, "task.eval_size", self.eval_size, "an int >= 1")
        require(self.reward_timeout_s > 0, "task.reward_timeout_s", self.reward_timeout_s,
                "a positive number of seconds")
