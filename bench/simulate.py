"""The controller at cluster scale: a discrete-event simulation in virtual time.

    python bench/simulate.py [--workers 8 64 256 1024] [--steps 16] [--staleness 4]

Drives the real policy objects, imported not copied (``RolloutController`` with its
``StalenessGate``, ``ThroughputBalancer``, ``LeastLoaded``, ``BusyTracker`` on a virtual
clock), with modelled engines and learners:

* outputs: n = 4 samples per prompt, lengths ~ lognormal(median 400, sigma 1.0) capped at 4096
  tokens; a group finishes with its longest sample (the long tail synchronous RL waits on);
* engines: continuous batching as processor sharing: with k sequences on a worker one decode
  step takes 20 ms + 0.2 ms * k and every sequence advances one token per step (so throughput
  grows with batch size, and so does each request's latency);
* weight sync: every new version pauses each engine for 1 s (in-flight sequences keep tokens);
* learners: data-parallel, scaled with the workers: a step takes 0.5 s + tokens / (R * W)
  seconds, R = 1000 tokens/s ("matched": generation and training keep pace) or 300
  ("learner-bound": generation could run ahead); B = 8 W groups per step. Weight export
  overlaps the next step, as in the driver.

Synchronous is the same simulation with ``max_staleness = 0``. Prints, per worker count: the
async/sync ratio of effective throughput (trained tokens per virtual second after warm-up),
both sides' idle fractions, mean staleness, and the controller's own CPU time per trajectory
(real seconds inside controller, gate, balancer and worker-choice calls). Writes
bench/results/simulate.{json,md}.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from areal.balancer import StepObservation, ThroughputBalancer  # noqa: E402
from areal.controller import RolloutController  # noqa: E402
from areal.staleness import StalenessGate  # noqa: E402
from areal.timeline import BusyTracker  # noqa: E402
from areal.types import Trajectory, TrajectoryGroup  # noqa: E402
from areal.worker_pool import LeastLoaded  # noqa: E402
from bench.provenance import provenance, write_results  # noqa: E402

MODEL = {"samples_per_prompt": 4, "length_median": 400, "length_sigma": 1.0, "length_cap": 4096,
         "step_base_s": 0.020, "step_per_seq_s": 0.0002, "sync_s": 1.0, "train_base_s": 0.5,
         "groups_per_step_per_worker": 8, "max_in_flight_per_worker": 64}
# learner tokens/s per worker: matched to generation (both sides busy), or the learner the bottleneck
REGIMES = {"matched": 1000.0, "learner-bound": 300.0}


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Engine:
    """One rollout worker: sequences advance together; ``progress`` counts decode steps since start."""

    busy: BusyTracker
    progress: float = 0.0
    updated: float = 0.0  # virtual time ``progress`` refers to (later than now while paused for a sync)
    targets: list = field(default_factory=list)  # heap of (progress at which a sequence ends, ticket)
    epoch: int = 0  # invalidates scheduled completions when the batch changes

    def step_time(self) -> float:
        return MODEL["step_base_s"] + MODEL["step_per_seq_s"] * len(self.targets)

    def advance(self, now: float) -> None:
        if self.targets and now > self.updated:
            self.progress += (now - self.updated) / self.step_time()
        self.updated = max(self.updated, now)

    def next_finish(self) -> float:
        return self.updated + max(0.0, self.targets[0][0] - self.progress) * self.step_time()


class Simulation:
    """One run of the pipeline; ``policy_seconds`` is the real time spent in the policy objects."""

    def __init__(self, workers: int, staleness: int, balance: bool, seed: int, learner_rate: float):
        self.clock, self.rng = Clock(), random.Random(seed)
        self.learner_rate = learner_rate  # tokens/s per worker's share of the data-parallel learners
        self.batch = MODEL["groups_per_step_per_worker"] * workers
        max_in_flight = MODEL["max_in_flight_per_worker"] * workers
        self.gate = StalenessGate(self.batch, staleness, max_in_flight)
        self.controller = RolloutController(self.gate, 100_000, filter_zero_variance=False, seed=seed)
        self.balancer = ThroughputBalancer(workers, max_in_flight, workers, workers, clock=self.clock) \
            if balance else None
        self.pool, self.engines = LeastLoaded(), {}
        for w in range(workers):
            self.pool.add(w)
            self.engines[w] = Engine(BusyTracker(clock=self.clock))
        self.learner = BusyTracker(clock=self.clock)
        self.events: list = []
        self._order = itertools.count()  # tie-breaker: events at the same instant run in scheduling order
        self.groups: dict[int, list] = {}  # ticket -> [samples left, worker, version, tokens, submitted at]
        self.training: tuple[float, int] | None = None  # (started, tokens)
        self.version = 0
        self.policy_seconds, self.finished_groups = 0.0, 0
        self.steps: list[dict] = []
        self._window = {"latency": [], "start": 0.0, "limit_bound": 0}

    # -- events --------------------------------------------------------------------------------
    def schedule(self, when: float, kind: str, payload) -> None:
        heapq.heappush(self.events, (when, next(self._order), kind, payload))

    def reschedule(self, w: int) -> None:
        engine = self.engines[w]
        engine.epoch += 1
        if engine.targets:
            self.schedule(engine.next_finish(), "engine", (w, engine.epoch))

    def run(self, steps: int) -> None:
        self.submit()
        while len(self.steps) < steps:
            when, _, kind, payload = heapq.heappop(self.events)
            self.clock.now = when
            if kind == "engine":
                self.on_engine(*payload)
            elif kind == "trained":
                self.on_trained()
            elif kind == "synced":
                self.timed(self.controller.on_trained, payload)
            self.maybe_train()
            self.submit()

    def timed(self, fn, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.policy_seconds += time.perf_counter() - start

    # -- rollouts ------------------------------------------------------------------------------
    def sample_length(self) -> int:
        draw = math.exp(self.rng.gauss(math.log(MODEL["length_median"]), MODEL["length_sigma"]))
        return min(MODEL["length_cap"], max(1, round(draw)))

    def submit(self) -> None:
        while (rollout := self.timed(self.controller.next_rollout)) is not None:
            w = self.timed(self.pool.pick)
            engine = self.engines[w]
            engine.advance(self.clock.now)
            if not engine.targets:
                engine.busy.start()
            lengths = [self.sample_length() for _ in range(MODEL["samples_per_prompt"])]
            for length in lengths:
                heapq.heappush(engine.targets, (engine.progress + length, rollout.ticket))
            self.groups[rollout.ticket] = [len(lengths), w, rollout.version, sum(lengths), self.clock.now]
            self.reschedule(w)
        self._window["limit_bound"] += self.controller.blocked.pop("limit", 0)

    def on_engine(self, w: int, epoch: int) -> None:
        engine = self.engines[w]
        if epoch != engine.epoch:
            return
        engine.advance(self.clock.now)
        while engine.targets and engine.targets[0][0] <= engine.progress + 1e-9:
            _, ticket = heapq.heappop(engine.targets)
            group = self.groups[ticket]
            group[0] -= 1
            if group[0] == 0:
                self.finish_group(ticket, group)
        if not engine.targets:
            engine.busy.end()
        self.reschedule(w)

    def finish_group(self, ticket: int, group: list) -> None:
        del self.groups[ticket]
        _, w, version, tokens, submitted = group
        trajectories = tuple(Trajectory((0,), (0,), (0.0,), (version,), float(i % 2), "", "stop")
                             for i in range(MODEL["samples_per_prompt"]))
        result = TrajectoryGroup(str(ticket), trajectories, version, {"tokens": tokens})
        self.timed(self.controller.on_group, ticket, result)
        self.timed(self.pool.release, w)
        self._window["latency"].append(self.clock.now - submitted)
        self.finished_groups += 1

    # -- learner -------------------------------------------------------------------------------
    def maybe_train(self) -> None:
        if self.training is not None:
            return
        batch = self.timed(self.controller.take_batch)
        if batch is None:
            return
        tokens = sum(g.info["tokens"] for g in batch)
        self.steps_staleness = [self.version - g.submit_version for g in batch]
        seconds = MODEL["train_base_s"] + tokens / (self.learner_rate * len(self.engines))
        self.training = (self.clock.now, tokens)
        self.learner.start()
        self.schedule(self.clock.now + seconds, "trained", None)

    def on_trained(self) -> None:
        started, tokens = self.training
        self.training = None
        self.learner.end()
        self.version += 1
        now, since = self.clock.now, self._window["start"]
        stale = self.steps_staleness
        self.maybe_train()  # the next step starts while the engines load this version
        for w, engine in self.engines.items():  # engines pause for the sync, keeping their tokens
            engine.advance(now)
            engine.updated = now + MODEL["sync_s"]
            self.reschedule(w)
        self.schedule(now + MODEL["sync_s"], "synced", self.version)
        rollout_idle = sum(e.busy.idle_fraction(since, now) for e in self.engines.values()) / len(self.engines)
        step = {"time": now, "tokens": tokens, "learner_idle": self.learner.idle_fraction(since, now),
                "rollout_idle": rollout_idle, "staleness": sum(stale) / len(stale), "staleness_max": max(stale),
                "limit": self.controller.in_flight_limit}
        if self.balancer is not None:
            latency = self._window["latency"]
            obs = StepObservation(step["learner_idle"], rollout_idle, len(self.controller.buffer), self.batch,
                                  now - started, sum(latency) / len(latency) if latency else None,
                                  self._window["limit_bound"] > 0, self.controller.blocked.pop("gate", 0) > 0,
                                  len(self.engines))
            self.controller.in_flight_limit = self.timed(self.balancer.on_step, obs).in_flight_limit
        self.steps.append(step)
        self._window = {"latency": [], "start": now, "limit_bound": 0}


def measure(workers: int, staleness: int, balance: bool, steps: int, warmup: int, seed: int,
            learner_rate: float = 1000.0) -> dict:
    start = time.perf_counter()
    sim = Simulation(workers, staleness, balance, seed, learner_rate)
    sim.run(steps)
    steady = sim.steps[warmup:]
    elapsed = steady[-1]["time"] - sim.steps[warmup - 1]["time"]
    mean = lambda key: sum(s[key] for s in steady) / len(steady)  # noqa: E731
    return {
        "tokens_per_s": sum(s["tokens"] for s in steady) / elapsed, "rollout_idle": mean("rollout_idle"),
        "learner_idle": mean("learner_idle"), "staleness": mean("staleness"),
        "policy_us_per_trajectory": 1e6 * sim.policy_seconds / max(sim.finished_groups, 1),
        "groups": sim.finished_groups, "unaccounted": sim.controller.unaccounted(),
        "max_staleness_trained": max(s["staleness_max"] for s in sim.steps),
        "final_limit": sim.controller.in_flight_limit, "wall_s": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 64, 256, 1024])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--staleness", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows: dict[str, dict] = {}
    lines = ["# Controller at scale: discrete-event simulation", "",
             f"`{provenance('')['command']}`; virtual time, modelled engines and learners (see the module "
             f"docstring), max_staleness {args.staleness}, steps {args.warmup + 1}-{args.steps} measured. "
             "Idle fractions are rollout / learner.", ""]
    for regime, rate in REGIMES.items():
        lines += [f"## {regime} (learner {rate:.0f} tokens/s per worker)", "",
                  "| workers | async/sync throughput | sync idle | async idle | balanced idle | balanced/async "
                  "throughput | staleness async / balanced | controller us per trajectory | trajectories | wall s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for workers in args.workers:
            runs = {name: measure(workers, eta, balance, args.steps, args.warmup, args.seed, rate)
                    for name, eta, balance in (("sync", 0, False), ("async", args.staleness, False),
                                               ("async_balanced", args.staleness, True))}
            rows[f"{regime}/{workers}"] = runs
            s, a, b = runs["sync"], runs["async"], runs["async_balanced"]
            lines.append(
                f"| {workers} | {a['tokens_per_s'] / s['tokens_per_s']:.2f}x | {s['rollout_idle']:.2f} / "
                f"{s['learner_idle']:.2f} | {a['rollout_idle']:.2f} / {a['learner_idle']:.2f} | "
                f"{b['rollout_idle']:.2f} / {b['learner_idle']:.2f} | {b['tokens_per_s'] / a['tokens_per_s']:.2f}x | "
                f"{a['staleness']:.2f} / {b['staleness']:.2f} | {b['policy_us_per_trajectory']:.1f} | "
                f"{sum(r['groups'] for r in runs.values())} | {sum(r['wall_s'] for r in runs.values()):.1f} |")
            print(lines[-1], flush=True)
        lines.append("")
    result = {"setup": provenance("discrete-event simulation of the controller policy"), "model": MODEL,
              "regimes": REGIMES, "args": vars(args), "rows": rows}
    write_results("simulate", result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
