"""Throughput balancing between generation and training (policy only; the driver
applies it).

Asynchronous RL is a producer/consumer pipeline joined by a bounded buffer. If
generation is slower, the learner waits for batches; if it is faster, rollouts
run ahead until the staleness gate stops them and then sit idle, and what they
made is older (more off-policy) than it needed to be. The ideal steady state is
that the next batch completes just as the learner finishes the current one.

The knob is the in-flight limit (groups generating at once, never above what
the gate allows). By Little's law, completing groups at the learner's rate
lambda = B / (seconds per train step) takes lambda * W groups in flight, W
being the time one group takes at the current load. The limit is set to
``ceil(lambda * W * gain * level)`` each step, where ``level`` answers the
buffer at once (above 1 while fewer than half a batch waits, below 1 above
that) and ``gain`` slowly corrects the estimate from two signals: the learner
waited for data (raise it), or a whole batch was already waiting behind the one
being trained and the backlog is not shrinking (lower it). Feeding forward from
the measured rates matters: the buffer ahead holds up to max_staleness batches,
so idle time alone reacts several steps late and a pure feedback loop
overshoots.

The worker count moves within the resource budget (min/max workers): one more
when the learner starves and the limit cannot help (at its maximum, or not what
holds generation back); one fewer when rollouts idle with the learner fed while
generation is ahead (a whole batch waits, or the staleness gate stops it).
Decisions are a pure function of the observations, and time comes from an
injected clock, so the same object runs in the driver and in the discrete-event
simulation (``bench/simulate.py``).
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
    rollout_idle: float  # fraction of worker-time with no rollout running, averaged over workers (reported)
    backlog: int  # groups left in the buffer right after the next batch was taken
    batch_size: int  # B, groups per train step
    train_seconds: float  # the learner's busy time for the step (its consumption rate is B / this)
    rollout_latency: float | None  # mean submit-to-result seconds of groups finished in the window
    limit_bound: bool  # the in-flight limit refused a submission in the window
    gate_bound: bool  # the staleness gate refused a submission in the window (generation is eta batches ahead)
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
        self.limit = max_in_flight  # where an unbalanced run would be, until the first measurement
        self.gain = 1.0 + target_idle  # a little faster than the learner, so it does not wait
        self.rate: float | None = None  # smoothed groups/s the learner consumes when fed
        self.latency: float | None = None  # smoothed seconds per group
        self._last_scaling = -math.inf
        self._last_backlog: int | None = None

    def _smooth(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.smoothing) * old + self.smoothing * new

    def on_step(self, obs: StepObservation) -> Decision:
        """Fold in one step's observation and decide the in-flight limit and worker change."""
        self.rate = self._smooth(self.rate, obs.batch_size / max(obs.train_seconds, 1e-6))
        if obs.rollout_latency is not None:
            self.latency = self._smooth(self.latency, obs.rollout_latency)
        starving = obs.learner_idle > self.target_idle
        ahead = obs.backlog >= obs.batch_size
        # a backlog that is already shrinking needs no further cut: it drains at the current limit
        draining = self._last_backlog is not None and obs.backlog < self._last_backlog
        self._last_backlog = obs.backlog
        if starving:
            self.gain = min(self.gain * 1.2, 8.0)
        elif ahead and not draining:
            self.gain = max(self.gain * 0.9, 0.25)
        floor = max(self.min_in_flight, obs.workers)  # every worker keeps at least one rollout
        if self.latency is not None:
            # proportional to how far the backlog is from half a batch: a fast answer to the buffer's level,
            # while ``gain`` slowly absorbs what the rate estimate gets wrong
            level = 1.0 + 0.5 * (0.5 * obs.batch_size - obs.backlog) / obs.batch_size
            target = self.rate * self.latency * self.gain * max(level, 0.0)
            self.limit = min(self.max_in_flight, max(floor, math.ceil(target)))
        can_scale = obs.starting == 0 and self.clock() - self._last_scaling >= self.cooldown_s
        if starving and (self.limit >= self.max_in_flight or not obs.limit_bound):
            if can_scale and obs.workers < self.max_workers:
                self._last_scaling = self.clock()
                return Decision(self.limit, 1, "learner starved and more in flight cannot help: add a worker")
            return Decision(self.limit, 0, "learner starved: at the in-flight and worker budget, or the "
                                           "staleness bound (algo.max_staleness) serialises the two sides")
        # rollouts idle while the learner is fed and generation is ahead (a batch waits, or the staleness
        # gate stops it): the same training throughput needs fewer workers
        spare = not starving and obs.rollout_idle > self.target_idle and (ahead or obs.gate_bound)
        if spare:
            if can_scale and obs.workers > self.min_workers:
                self._last_scaling = self.clock()
                return Decision(self.limit, -1, "rollouts idle with the learner fed: retire a worker")
            if ahead and self.limit <= floor:
                return Decision(self.limit, 0, "generation ahead at the in-flight and worker floor")
        if starving:
            return Decision(self.limit, 0, "learner starved: more rollouts in flight")
        if ahead:
            return Decision(self.limit, 0, "a whole batch waits: fewer rollouts in flight (fresher samples)")
        return Decision(self.limit, 0, "balanced")

    def state_dict(self) -> dict:
        return {"limit": self.limit, "gain": self.gain, "rate": self.rate, "latency": self.latency}

    def load_state_dict(self, state: dict) -> None:
        self.limit = min(self.max_in_flight, max(self.min_in_flight, int(state["limit"])))
        self.gain, self.rate, self.latency = state["gain"], state["rate"], state["latency"]
