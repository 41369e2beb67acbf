"""Held-out sets beyond the default one (``task.eval_sets``), and the checks shared with ``task.*``: where rows come
from and which rewards score them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List

from areal.config._checks import require

BUILTIN_REWARDS = ("math_verify", "think_format", "code_tests", "soft_overlong", "http")


@dataclass
class EvalSetConfig:
    """One more held-out set (``task.eval_sets``): its rows, and optionally its own columns, rewards and k.
    Logged under eval/<name>/ and written to RUN_DIR/generations/<name>/."""

    name: str = ""
    """How its metrics and generations are named (eval/<name>/accuracy)."""
    path: Any = ""
    """Its rows: a file, a list of files, a saved directory or a dataset name (as task.path)."""
    split: str = "train"
    """The split of path (local files hold one split, train)."""
    size: int = 0
    """Rows evaluated (the first ones); 0 = all."""
    prompt_key: str = ""
    """The prompt column; empty = task.prompt_key."""
    answer_key: str = ""
    """The reference column; empty = task.answer_key."""
    prompt_template: str = ""
    """A string prompt built from columns; empty = task.prompt_template (dataset tasks)."""
    rewards: List[str] = field(default_factory=list)
    """Its rewards; empty = task.rewards (with task.reward_weights)."""
    reward_weights: List[float] = field(default_factory=list)
    """One weight per entry of its rewards; empty = all 1.0."""
    k: int = -1
    """Samples per prompt for pass@k and mean@k; -1 = task.eval_k, 0 = greedy only."""

    def __post_init__(self):
        key = f"task.eval_sets[{self.name or '?'}]"
        require(bool(self.name) and "/" not in self.name, f"{key}.name", self.name,
                "a name without '/' (metrics go to eval/<name>/...)")
        check_sources(self.path, f"{key}.path", required=True)
        require(self.size >= 0, f"{key}.size", self.size, "an int >= 0 (0 = every row)")
        require(self.k >= -1, f"{key}.k", self.k, "an int >= 0, or -1 for task.eval_k")
        if self.rewards:
            check_reward_list(self.rewards, self.reward_weights, key)


def check_sources(path: Any, key: str, required: bool) -> None:
    """``path`` is a non-empty string or a non-empty list of them (or empty, when not ``required``)."""
    if not required and path in ("", None, []):
        return
    paths = list(path) if isinstance(path, (list, tuple)) else [path]
    require(bool(paths) and all(isinstance(p, str) and p for p in paths), key, path,
            "a file, a list of files, a saved dataset directory or a dataset name")


def check_reward_list(rewards: List[str], weights: List[float], key: str) -> None:
    """Entries are built-in names or ``module:function`` references; weights match them one to one."""
    for entry in rewards:
        require(entry in BUILTIN_REWARDS or ":" in entry, f"{key}.rewards", list(rewards),
                f"built-in names ({', '.join(BUILTIN_REWARDS)}), 'package.module:function', 'path/to/file.py:function'"
                f" or 'verl:package.module:function'; {entry!r} is none of them")
    require(not weights or len(weights) == len(rewards), f"{key}.reward_weights", list(weights),
            f"one weight per reward ({len(rewards)}: {list(rewards)}), or empty for all 1.0")
