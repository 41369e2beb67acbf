"""Throughput balancing between generation and training (policy only; the driver applies it).

Asynchronous RL is a producer/consumer pipeline joined by a bounded buffer. If
generation is slower, the learner waits for batches; if it is faster, rollouts
run ahead until the staleness gate stops them and then sit idle, and what they
made is older (more off-policy) than it needed to be. The balancer watches both
sides' idle fractions once per train step and turns two knobs:

* the in-flight limit (groups generating at once, never above what the gate
  allows): lower it while rollouts idle and the learner does not, which slows
  generation to the learner's pace and keeps the engines busy with fresher
  work; raise it while the learner starves;
* the number of rollout workers, between a minimum and a maximum (the resource
  budget): add one when the learner starves although the limit is not what
  holds generation back, retire one when rollouts idle at the lowest limit.

Both rules act only outside a dead band (idle above ``target_idle``), so a
pipeline that is balanced stays as it is. Decisions are a pure function of the
observations, and time comes from an injected clock, so the same object runs in
the driver and in the discrete-event simulation (``bench/simulate.py``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class StepObservation:
    """What the driver saw over one train step's window."""

    learner_idle: float  # fraction of the window the learner had no step running
    rollout_idle: float  # fraction of worker-time with no rollout running, averaged over workers
    limit_bound: bool  # the in-flight limit (not the staleness gate) refused a submission in the window
    workers: int  # rollout workers serving now
    starting: int = 0  # rollout workers started but not yet serving


@dataclass(frozen=True)
class Decision:
    """The balancer's answer: the in-flight limit to use and how many workers to add (<0: retire)."""

    in_flight_limit: int
    add_workers: int
    reason: str


class ThroughputBalancer:
    """Keeps both sides of the pipeline busy by adjusting in-flight rollouts and the worker count."""

    def __init__(self, min_in_flight: int, max_in_flight: int, min_workers: int, max_workers: int,
                 target_idle: float = 0.1, smoothing: float = 0.5, cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        if not 1 <= min_in_flight <= max_in_flight:
            raise ValueError(f"ThroughputBalancer: need 1 <= min_in_flight ({min_in_flight}) <= max_in_flight "
                             f"({max_in_flight})")
        if not 1 <= min_workers <= max_workers:
            raise ValueError(f"ThroughputBalancer: need 1 <= min_workers ({min_workers}) <= max_workers "
                             f"({max_workers})")
        if not 0 < target_idle < 1 or not 0 < smoothing <= 1:
            raise ValueError(f"ThroughputBalancer: target_idle ({target_idle}) and smoothing ({smoothing}) must be "
                             "in (0, 1)")
        self.min_in_flight, self.max_in_flight = min_in_flight, max_in_flight
        self.min_workers, self.max_workers = min_workers, max_workers
        self.target_idle, self.smoothing, self.cooldown_s = target_idle, smoothing, cooldown_s
        self.clock = clock
        self.limit = max_in_flight  # start where an unbalanced run would be, then walk
        self.learner_idle: float | None = None  # smoothed observations
        self.rollout_idle: float | None = None
        self._last_scaling = -math.inf

    def _smooth(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.smoothing) * old + self.smoothing * new

    def on_step(self, obs: StepObservation) -> Decision:
        """Fold in one step's observation and decide the in-flight limit and worker change."""
        self.learner_idle = self._smooth(self.learner_idle, obs.learner_idle)
        self.rollout_idle = self._smooth(self.rollout_idle, obs.rollout_idle)
        starving, idling = self.learner_idle > self.target_idle, self.rollout_idle > self.target_idle
        can_scale = obs.starting == 0 and self.clock() - self._last_scaling >= self.cooldown_s
        if starving and not idling:
            if obs.limit_bound and self.limit < self.max_in_flight:
                self.limit = min(self.max_in_flight, self.limit + max(1, self.limit // 4))
                return Decision(self.limit, 0, "learner starved: more rollouts in flight")
            if can_scale and obs.workers < self.max_workers:
                self._last_scaling = self.clock()
                return Decision(self.limit, 1, "learner starved with generation unconstrained: add a worker")
            return Decision(self.limit, 0, "learner starved: at the in-flight and worker budget")
        if idling and not starving:
            floor = max(self.min_in_flight, obs.workers)  # every worker keeps at least one rollout
            if self.limit > floor:
                self.limit = max(floor, self.limit - max(1, self.limit // 4))
                return Decision(self.limit, 0, "rollouts idle: fewer in flight (fresher samples)")
            if can_scale and obs.workers > self.min_workers:
                self._last_scaling = self.clock()
                return Decision(self.limit, -1, "rollouts idle at the lowest limit: retire a worker")
            return Decision(self.limit, 0, "rollouts idle: at the in-flight and worker floor")
        if starving and idling:
            return Decision(self.limit, 0, "both sides idle: the staleness bound (algo.max_staleness) "
                                           "serialises generation and training")
        return Decision(self.limit, 0, "balanced")

    def state_dict(self) -> dict:
        return {"limit": self.limit, "learner_idle": self.learner_idle, "rollout_idle": self.rollout_idle}

    def load_state_dict(self, state: dict) -> None:
        self.limit = min(self.max_in_flight, max(self.min_in_flight, int(state["limit"])))
        self.learner_idle, self.rollout_idle = state["learner_idle"], state["rollout_idle"]
