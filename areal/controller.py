"""The controller's policy: which prompt to generate next, what to keep, when a batch is ready.

Pure bookkeeping over the staleness gate, a prompt cursor, a ledger of tickets in
flight and a FIFO buffer; the driver in ``actors/`` does the I/O and asks this
object what to do. Every prompt drawn from the dataset order is, at any moment,
in exactly one place: in flight, buffered, trained, filtered, or queued to be
generated again (``unaccounted()`` is 0). Each submission gets a ticket; a
ticket resolves once, so a result that arrives after its rollout was declared
failed (and requeued) is ignored rather than counted twice.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from areal.staleness import StalenessGate
from areal.types import TrajectoryGroup, group_from_dict, group_to_dict

ACCEPTED, STALE, FILTERED, IGNORED = "accepted", "stale", "filtered", "ignored"


@dataclass(frozen=True)
class Rollout:
    """One submission: which prompt, under which ticket, with which sampling seed."""

    ticket: int
    prompt: int  # index into the task's train split
    version: int  # policy version at submission: the group's staleness start
    seed: int  # sampling seed, a function of (run seed, ticket) only, so a resumed run draws the same


def sampling_seed(run_seed: int, ticket: int) -> int:
    """A well-mixed 31-bit seed per ticket (engines take signed 32-bit seeds)."""
    return int(np.random.SeedSequence([run_seed, ticket]).generate_state(1)[0] >> 1)


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
        self.tickets = 0  # submissions so far; the next ticket number
        self._order = self._permutation(0)
        self.retry: deque[int] = deque()  # prompts to generate again (stale or failed)
        self.in_flight: dict[int, int] = {}  # ticket -> prompt
        self.buffer: deque[TrajectoryGroup] = deque()
        self._buffered_prompts: deque[int] = deque()  # prompt index of each buffered group, same order
        self.outcomes: Counter[str] = Counter()
        self.since_accepted: Counter[str] = Counter()  # outcomes since the last accepted group: a stall shows here
        self.in_flight_limit: int | None = None  # set by a throughput balancer; None = the gate alone decides
        self.blocked: Counter[str] = Counter()  # why next_rollout said no: "gate" or "limit"

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_prompts)

    # -- submission ---------------------------------------------------------------------------
    def next_rollout(self) -> Rollout | None:
        """The rollout to submit now, or None when the gate (or the balancer's limit) has no room."""
        if self.gate.capacity() <= 0:
            self.blocked["gate"] += 1
            return None
        if self.in_flight_limit is not None and len(self.in_flight) >= self.in_flight_limit:
            self.blocked["limit"] += 1
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
        ticket, self.tickets = self.tickets, self.tickets + 1
        self.in_flight[ticket] = index
        return Rollout(ticket, index, self.gate.version, sampling_seed(self.seed, ticket))

    # -- results --------------------------------------------------------------------------------
    def on_group(self, ticket: int, group: TrajectoryGroup) -> str:
        """Accept a finished group into the buffer, or reject it (too stale: retried; no signal: dropped).

        No signal: every reward failed (nothing to learn from), or, with ``filter_zero_variance``, the scored
        samples all got the same reward.

        A ticket that is no longer in flight (declared failed, or voided by a restore) is ``ignored``.
        """
        index = self.in_flight.pop(ticket, None)
        if index is None:
            outcome = IGNORED
        elif not self.gate.is_fresh(group.submit_version):
            self.gate.on_reject()
            self.retry.append(index)
            outcome = STALE
        elif not group.rewards or (self.filter_zero_variance and len(set(group.rewards)) == 1):
            self.gate.on_reject()
            outcome = FILTERED
        else:
            self.gate.on_accept()
            self.buffer.append(group)
            self._buffered_prompts.append(index)
            outcome = ACCEPTED
        self.outcomes[outcome] += 1
        if outcome == ACCEPTED:
            self.since_accepted.clear()
        elif outcome != IGNORED:
            self.since_accepted[outcome] += 1
        return outcome

    def on_failure(self, ticket: int) -> bool:
        """A rollout failed (its worker died or timed out): give its slot back and queue its prompt
        again, once. Returns False for a ticket already resolved (nothing changes)."""
        index = self.in_flight.pop(ticket, None)
        if index is None:
            return False
        self.gate.on_reject()
        self.retry.append(index)
        self.outcomes["failed"] += 1
        self.since_accepted["failed"] += 1
        return True

    def take_batch(self) -> list[TrajectoryGroup] | None:
        """The oldest ``batch_size`` accepted groups (FIFO, as the gate's freshness rule assumes)."""
        if len(self.buffer) < self.gate.batch_size:
            return None
        for _ in range(self.gate.batch_size):
            self._buffered_prompts.popleft()
        self.outcomes["trained"] += self.gate.batch_size
        return [self.buffer.popleft() for _ in range(self.gate.batch_size)]

    def on_trained(self, version: int) -> None:
        """The rollout side now runs ``version``."""
        self.gate.set_version(version)

    def stalled(self, limit: int) -> bool:
        """Whether the last ``limit`` resolved rollouts were all rejected (0 = never)."""
        return limit > 0 and sum(self.since_accepted.values()) >= limit

    # -- accounting -----------------------------------------------------------------------------
    @property
    def drawn(self) -> int:
        """Prompts taken from the dataset order so far (epochs included)."""
        return self.epoch * self.num_prompts + self.cursor

    def unaccounted(self) -> int:
        """Drawn prompts that are nowhere; 0 unless the bookkeeping is broken."""
        placed = (self.outcomes["trained"] + self.outcomes["filtered"] + len(self.buffer) + len(self.in_flight)
                  + len(self.retry))
        return self.drawn - placed

    def ledger(self) -> dict[str, int]:
        """Where every drawn prompt is, plus the event counts (for run summaries and tests)."""
        return {"drawn": self.drawn, "buffered": len(self.buffer), "in_flight": len(self.in_flight),
                "queued": len(self.retry), "unaccounted": self.unaccounted(), **self.outcomes}

    # -- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly, as JSON-safe data: cursor, tickets, the retry queue,
        the buffered groups (samples included) and the gate. Rollouts in flight cannot be saved; their
        prompts go to the front of the retry queue, so a resumed run generates them again."""
        return {"epoch": self.epoch, "cursor": self.cursor, "tickets": self.tickets,
                "retry": list(self.in_flight.values()) + list(self.retry),
                "buffer": [group_to_dict(g) for g in self.buffer], "buffered_prompts": list(self._buffered_prompts),
                "gate": self.gate.state_dict(), "outcomes": dict(self.outcomes)}

    def load_state_dict(self, state: dict, version: int) -> None:
        """Restore what ``state_dict`` saved, for a run continuing at policy ``version``."""
        self.epoch, self.cursor, self.tickets = state["epoch"], state["cursor"], state["tickets"]
        self._order = self._permutation(self.epoch)
        self.retry = deque(state["retry"])
        self.in_flight = {}
        self.buffer = deque(group_from_dict(g) for g in state["buffer"])
        self._buffered_prompts = deque(state["buffered_prompts"])
        outcomes = Counter(state["outcomes"])
        # rollouts in flight at save time were requeued: their outcome is still to come
        outcomes.pop(IGNORED, None)
        self.outcomes = outcomes
        self.gate.load_state_dict(state["gate"])
        self.gate.restore(version, buffered=len(self.buffer))


def stall_message(since_accepted: Counter, limit: int, reward_failures: int, example: str) -> str:
    """Why a run that accepts nothing stops: counts by reason, one reward failure, the settings to change."""
    counts = ", ".join(f"{n} {reason}" for reason, n in sorted(since_accepted.items()))
    lines = [f"no rollout group accepted in the last {sum(since_accepted.values())} ({counts}); stopping "
             f"(controller.max_unaccepted_groups={limit})"]
    if reward_failures:
        lines.append(f"{reward_failures} reward computations failed meanwhile, e.g. {example}: fix the reward "
                     "(task.*) or what it needs on the rollout nodes")
    if since_accepted.get(FILTERED):
        lines.append("filtered = every sample of the group got the same reward (no learning signal): the model "
                     "is always right or always wrong on these prompts, or the reward is constant; change the "
                     "task or model, or set algo.filter_zero_variance=false to train on such groups anyway")
    if since_accepted.get(STALE):
        lines.append("stale = finished more than algo.max_staleness versions after it started: raise "
                     "algo.max_staleness, or add rollout workers so generation keeps up with the learner")
    if since_accepted.get("failed"):
        lines.append("failed = its rollout worker died or timed out: see the rollout worker errors above")
    return "\n".join(lines)
