"""A task: train and held-out prompts plus a reward that scores what the policy made of them."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class TaskSample:
    """One prompt with the reference its completions are scored against."""

    id: str
    prompt: str
    reference: str


class Task(abc.ABC):
    """Prompts to train and evaluate on, and the scoring rule.

    Subclasses build their splits and hand them to ``__init__``; only ``score`` is theirs to write.
    """

    def __init__(self, train: Sequence[TaskSample], eval: Sequence[TaskSample]):  # noqa: A002 (the split's name)
        self._train, self._eval = tuple(train), tuple(eval)

    @property
    def train(self) -> Sequence[TaskSample]:
        """Training prompts, in a fixed order (the controller keeps its own cursor)."""
        return self._train

    @property
    def eval(self) -> Sequence[TaskSample]:
        """Held-out prompts, disjoint from ``train``."""
        return self._eval

    @abc.abstractmethod
    def score(self, output, sample: TaskSample) -> float:
        """Reward of one output (a completion's text, or an image); may raise, the caller records the failure."""
