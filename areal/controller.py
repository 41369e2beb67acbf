"""The controller's policy: which prompt to generate next, what to keep, when a batch is ready.

Pure bookkeeping over the staleness gate, a prompt cursor and a FIFO buffer;
the driver in ``actors/`` does the I/O and asks this object what to do. Every
prompt is accounted for: it is in flight, buffered, trained, filtered, or
queued to be generated again.
"""

from __future__ import annotations

from collections import Counter, deque

import numpy as np

from areal.staleness import StalenessGate
from areal.types import TrajectoryGroup

ACCEPTED, STALE, FILTERED = "accepted", "stale", "filtered"


class RolloutController:
    """Admission, acceptance and batching decisions for asynchronous RL (AReaL §5)."""

    def __init__(self, gate: StalenessGate, num_prompts: int, filter_zero_variance: bool, seed: int = 0):
        if num_prompts < 1:
            raise ValueError("RolloutController: the task has no training prompts")
        self.gate = gate
        self.num_prompts = num_prompts
        self.filter_zero_variance = filter_zero_variance
        self.seed = seed
        self.epoch = 0
        self.cursor = 0
        self._order = self._permutation(0)
        self.retry: deque[int] = deque()  # prompts to generate again (stale or failed)
        self.buffer: deque[TrajectoryGroup] = deque()
        self._buffered_prompts: deque[int] = deque()  # prompt index of each buffered group, same order
        self.outcomes: Counter[str] = Counter()

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_prompts)

    def next_prompt(self) -> int | None:
        """The prompt index to submit now, or None when the gate has no capacity."""
        if self.gate.capacity() <= 0:
            return None
        if self.retry:
            index = self.retry.popleft()
        else:
            if self.cursor == self.num_prompts:
                self.epoch += 1
                self.cursor = 0
                self._order = self._permutation(self.epoch)
            index = int(self._order[self.cursor])
            self.cursor += 1
        self.gate.on_submit()
        return index

    def on_group(self, prompt_index: int, group: TrajectoryGroup) -> str:
        """Accept a finished group into the buffer, or reject it (too stale: retried; no signal: dropped)."""
        if not self.gate.is_fresh(group.submit_version):
            self.gate.on_reject()
            self.retry.append(prompt_index)
            outcome = STALE
        elif self.filter_zero_variance and len(set(group.rewards)) == 1:
            self.gate.on_reject()
            outcome = FILTERED
        else:
            self.gate.on_accept()
            self.buffer.append(group)
            self._buffered_prompts.append(prompt_index)
            outcome = ACCEPTED
        self.outcomes[outcome] += 1
        return outcome

    def on_failure(self, prompt_index: int) -> None:
        """A rollout failed (its worker died or timed out): give the slot back and retry the prompt once more."""
        self.gate.on_reject()
        self.retry.append(prompt_index)
        self.outcomes["failed"] += 1

    def take_batch(self) -> list[TrajectoryGroup] | None:
        """The oldest ``batch_size`` accepted groups (FIFO, as the gate's freshness rule assumes)."""
        if len(self.buffer) < self.gate.batch_size:
            return None
        for _ in range(self.gate.batch_size):
            self._buffered_prompts.popleft()
        return [self.buffer.popleft() for _ in range(self.gate.batch_size)]

    def on_trained(self, version: int) -> None:
        """The learner published ``version``."""
        self.gate.set_version(version)

    def state_dict(self) -> dict:
        """Cursor, retry queue and gate counters (the buffer is saved by the caller with the groups)."""
        return {"epoch": self.epoch, "cursor": self.cursor, "retry": list(self.retry),
                "gate": self.gate.state_dict(), "outcomes": dict(self.outcomes)}

    def requeued_state_dict(self, in_flight: list[int]) -> dict:
        """``state_dict`` for a checkpoint that keeps no samples: the prompts of buffered groups and
        of rollouts still ``in_flight`` go to the front of the retry queue, so a run resumed from it
        generates them again and no prompt of the epoch is skipped."""
        state = self.state_dict()
        state["retry"] = list(self._buffered_prompts) + list(in_flight) + state["retry"]
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` saved."""
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self._order = self._permutation(self.epoch)
        self.retry = deque(state["retry"])
        self.gate.load_state_dict(state["gate"])
        self.outcomes = Counter(state["outcomes"])
