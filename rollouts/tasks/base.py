"""A task: train and held-out prompts plus a reward that scores what the policy made of them."""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, Union

Message = Mapping[str, str]  # one chat turn: {"role": ..., "content": ...}
Prompt = Union[str, tuple]  # a text, or a conversation: a tuple of Message (TRL's conversational format)


@dataclass(frozen=True)
class TaskSample:
    """One prompt with the reference its completions are scored against.

    ``prompt`` is a text or, for chat datasets, a tuple of ``{role, content}`` messages (system turns included)
    that the model's chat template renders. ``columns`` holds every column of the dataset row (the rewards get
    them all); generated tasks leave it empty.
    """

    id: str
    prompt: Prompt
    reference: str
    columns: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_chat(self) -> bool:
        return not isinstance(self.prompt, str)

    @property
    def prompt_text(self) -> str:
        """The prompt as a person reads it: the text, or the conversation as JSON."""
        return self.prompt if isinstance(self.prompt, str) else json.dumps(list(self.prompt), ensure_ascii=False)


class Task:
    """Prompts to train and evaluate on. How completions are scored is the rewards' business
    (``rollouts.rewards``): a dataset task names reward functions, a ``ScoredTask`` scores them itself."""

    def __init__(self, train: Sequence[TaskSample], eval: Sequence[TaskSample]):  # noqa: A002 (the split's name)
        # a Sequence, not necessarily a tuple: a dataset's rows stay in Arrow until drawn
        self._train, self._eval = train, eval

    @property
    def train(self) -> Sequence[TaskSample]:
        """Training prompts, in a fixed order (the controller keeps its own cursor)."""
        return self._train

    @property
    def eval(self) -> Sequence[TaskSample]:
        """Held-out prompts, disjoint from ``train``."""
        return self._eval

    @property
    def eval_sets(self) -> dict[str, Sequence[TaskSample]]:
        """Every held-out set by name; "eval" is the default one (``eval``)."""
        return {"eval": self._eval}

    def digest(self) -> str:
        """What a checkpoint records of the training prompts: resuming on other data fails naming it."""
        from areal.fingerprint import digest

        return digest([[s.id, s.prompt, s.reference] for s in self._train])


class ScoredTask(Task, abc.ABC):
    """A task with its own scoring rule (generated arithmetic, image prompts): one reward, ``score``."""

    @abc.abstractmethod
    def score(self, output, sample: TaskSample) -> float:
        """Reward of one output (a completion's text, or an image); may raise, the caller records the failure."""
