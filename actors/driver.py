"""The driver: starts the actors and runs the controller loop (gate, submit, collect, train, publish).

It holds no algorithm math: admission and acceptance are ``areal.controller``,
advantages are ``areal.batching`` / ``areal.algos``, the update is the learner's.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Protocol

import ray

from actors.learner_group import LearnerGroup, wait_all
from actors.rollout_actor import RolloutActor, rollout_env
from areal.batching import build_train_batch
from areal.config import TrainConfig
from areal.controller import ACCEPTED, RolloutController
from areal.staleness import StalenessGate
from areal.timeline import BusyTracker
from rollouts.tasks.base import Task

log = logging.getLogger(__name__)


class MetricsSink(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def close(self) -> None: ...


class Driver:
    """Runs one asynchronous RL job on an already initialised Ray."""

    def __init__(self, cfg: TrainConfig, model_path: str, task: Task, pad_id: int, sinks: list[MetricsSink],
                 use_gpu: bool = False, resume: tuple[Path, dict] | None = None):
        """``resume``: (checkpoint directory, its verified manifest) to continue from."""
        self.cfg, self.task, self.pad_id, self.sinks = cfg, task, pad_id, sinks
        self.out_dir = Path(cfg.out_dir)
        gate = StalenessGate(cfg.batch_size, cfg.algo.max_staleness, cfg.rollout.max_concurrent)
        self.controller = RolloutController(gate, len(task.train), cfg.algo.filter_zero_variance, cfg.seed)
        self.version = 0
        if resume is not None:
            checkpoint, manifest = resume
            self.version = int(manifest["version"])
            self.controller.load_state_dict(manifest["controller"])
            self.controller.gate.restore(self.version)
            log.info("resuming from %s at version %d", checkpoint, self.version)
        self.model_path = model_path
        if cfg.learner.byzantine.ranks:
            log.warning("BYZANTINE SIMULATION ON: learner ranks %s send %r gradients; aggregator %s with f=%d "
                        "(learner.byzantine: for robustness experiments only)", cfg.learner.byzantine.ranks,
                        cfg.learner.byzantine.attack, cfg.learner.aggregator, cfg.learner.aggregator_f)
        self.rollouts = [
            RolloutActor.options(num_cpus=cfg.rollout.num_cpus, num_gpus=cfg.rollout.num_gpus,
                                 runtime_env={"env_vars": rollout_env(cfg, use_gpu)}).remote(cfg, model_path, rank)
            for rank in range(cfg.rollout.workers)
        ]
        self.learners = LearnerGroup(cfg, model_path, use_gpu, checkpoint=str(resume[0]) if resume else "")
        wait_all([a.ready.remote() for a in self.rollouts], cfg.rollout.start_timeout_s, "rollout engine start",
                 "rollout.start_timeout_s")
        if self.version:  # resumed: engines take the checkpoint's weights and tag tokens with its version
            payload = self.learners.weights_payload()
            wait_all([a.load_weights.remote(payload, self.version) for a in self.rollouts],
                     cfg.rollout.weight_sync_timeout_s, "weight sync after resume", "rollout.weight_sync_timeout_s")
        self.learner_busy = BusyTracker()
        self.inflight: dict[ray.ObjectRef, tuple[int, int, float]] = {}  # ref -> (prompt, worker, submitted at)
        self.load = Counter()  # groups in flight per worker
        self.window: dict[str, list[float]] = {}
        self.history: list[dict[str, float]] = []

    # -- the loop ---------------------------------------------------------
    def run(self) -> dict:
        """Train ``total_steps`` versions; returns the run summary."""
        start = time.time()
        initial, initial_texts = self.evaluate()
        self.emit(0, {"eval/accuracy": initial})
        log.info("step 0: held-out accuracy %.3f", initial)
        training: list[ray.ObjectRef] = []
        step_started = loop_started = time.time()
        while self.version < self.cfg.total_steps:
            self.submit()
            ready, _ = ray.wait(list(self.inflight) + training[:1], num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in self.inflight:
                    self.collect(ref)
            self.check_timeouts()
            if training and ray.wait(training, num_returns=len(training), timeout=0)[1] == []:
                stats = LearnerGroup.merge_stats(ray.get(training))
                training = []
                self.learner_busy.end()
                self.publish_weights(stats)
                metrics = self.step_metrics(stats, since=step_started)
                step_started = time.time()
                if self.cfg.eval_every and self.version % self.cfg.eval_every == 0 and \
                        self.version < self.cfg.total_steps:
                    metrics["eval/accuracy"] = self.evaluate()[0]
                if self.cfg.checkpoint.every and self.version % self.cfg.checkpoint.every == 0 and \
                        self.version < self.cfg.total_steps:
                    self.save_checkpoint()
                self.emit(self.version, metrics)
            if not training:
                training = self.maybe_train()
        loop_seconds = time.time() - loop_started
        final, final_texts = self.evaluate()
        self.emit(self.version, {"eval/accuracy": final})
        checkpoint = self.save_checkpoint()
        engine_versions = [s["version"] for s in ray.get([a.stats.remote() for a in self.rollouts])]
        stale = [h["staleness/max"] for h in self.history if "staleness/max" in h]
        return {
            "initial_accuracy": initial, "final_accuracy": final, "steps": self.version,
            "seconds": time.time() - start, "train_loop_seconds": loop_seconds, "checkpoint": checkpoint,
            "outcomes": dict(self.controller.outcomes),
            "rollout_engine_versions": engine_versions,
            # weights reached the engines: greedy held-out completions that differ from the start
            "eval_completions_changed": sum(a != b for a, b in zip(initial_texts, final_texts)),
            "max_trained_staleness": max(stale, default=0.0),
        }

    def save_checkpoint(self) -> str:
        """A complete checkpoint of the learners plus the controller's position in the data."""
        start = time.time()
        # samples are not saved: a resumed run generates buffered and in-flight prompts again
        state = self.controller.requeued_state_dict([index for index, _, _ in self.inflight.values()])
        path = self.learners.save_checkpoint(str(self.out_dir / "checkpoints"), {
            "step": self.version, "version": self.version, "controller": state, "seed": self.cfg.seed})
        log.info("checkpoint %s (%.1fs)", path, time.time() - start)
        return path

    def submit(self) -> None:
        """Start rollouts while the staleness gate has room, each on the least-loaded worker."""
        while (index := self.controller.next_prompt()) is not None:
            worker = min(range(len(self.rollouts)), key=lambda w: self.load[w])
            ref = self.rollouts[worker].run_group.remote(self.task.train[index], self.controller.gate.version)
            self.inflight[ref] = (index, worker, time.monotonic())
            self.load[worker] += 1

    def collect(self, ref: ray.ObjectRef) -> None:
        """Hand a finished group to the controller."""
        index, worker, _ = self.inflight.pop(ref)
        self.load[worker] -= 1
        group = ray.get(ref)  # a dead worker raises here: failures are handled by the caller's caller
        outcome = self.controller.on_group(index, group)
        self.record("rollout/generated_tokens", group.num_output_tokens)
        self.record(f"rollout/{outcome}", 1)
        failures = sum(group.info.get("reward_failures", {}).values())
        if failures:
            self.record("rollout/reward_failures", failures)
            log.warning("reward failures in group %s: %s", group.prompt_id, group.info.get("reward_failure_example"))
        if outcome == ACCEPTED:
            self.record("rollout/reward", *group.rewards)

    def check_timeouts(self) -> None:
        """A rollout past ``rollout.generate_timeout_s`` is an error naming its worker."""
        now = time.monotonic()
        for index, worker, submitted in self.inflight.values():
            if now - submitted > self.cfg.rollout.generate_timeout_s:
                raise TimeoutError(
                    f"RolloutActor {worker}: run_group(prompt {index}) unfinished after {now - submitted:.0f}s "
                    f"(rollout.generate_timeout_s={self.cfg.rollout.generate_timeout_s})"
                )

    def maybe_train(self) -> list[ray.ObjectRef]:
        """Start a train step on the oldest B accepted groups, if there are B."""
        groups = self.controller.take_batch()
        if groups is None:
            return []
        batch = build_train_batch(groups, self.cfg.algo.advantage, self.pad_id)
        for group in groups:
            self.record("staleness/trained", *[self.version - group.submit_version] * len(group.trajectories))
        self.record("learner/consumed_tokens", batch.num_tokens)
        self.learner_busy.start()
        return self.learners.train_step_async(batch)

    def publish_weights(self, stats: dict[str, float]) -> None:
        """Ship version v+1 to every rollout worker; the gate moves on once all have it."""
        start = time.time()
        payload = self.learners.weights_payload()
        seconds = wait_all([a.load_weights.remote(payload, self.version + 1) for a in self.rollouts],
                           self.cfg.rollout.weight_sync_timeout_s, f"weight sync to version {self.version + 1}",
                           "rollout.weight_sync_timeout_s")
        self.version += 1
        self.controller.on_trained(self.version)
        stats["weights/sync_seconds"] = time.time() - start
        stats["weights/load_seconds_max"] = max(seconds)

    def evaluate(self) -> tuple[float, list[str]]:
        """Greedy held-out accuracy and completions (in eval order), split across rollout workers."""
        samples = list(self.task.eval)
        shards = [samples[i:: len(self.rollouts)] for i in range(len(self.rollouts))]
        refs = [a.evaluate.remote(s) for a, s in zip(self.rollouts, shards) if s]
        parts = wait_all(refs, self.cfg.rollout.generate_timeout_s, "evaluation", "rollout.generate_timeout_s")
        results = [None] * len(samples)
        for shard_index, part in enumerate(parts):
            for j, result in enumerate(part):
                results[shard_index + j * len(self.rollouts)] = result
        return sum(score for score, _ in results) / len(results), [text for _, text in results]

    # -- metrics ----------------------------------------------------------
    def record(self, key: str, *values: float) -> None:
        self.window.setdefault(key, []).extend(values)

    def step_metrics(self, learner_stats: dict[str, float], since: float) -> dict[str, float]:
        """Everything observed since the previous step, as namespaced scalars."""
        elapsed = max(time.time() - since, 1e-9)
        w, self.window = self.window, {}
        metrics = dict(learner_stats)
        metrics["rollout/reward_mean"] = sum(w.get("rollout/reward", [0])) / max(len(w.get("rollout/reward", [])), 1)
        for key in ("accepted", "stale", "filtered", "reward_failures"):
            metrics[f"rollout/{key}"] = float(sum(w.get(f"rollout/{key}", [])))
        metrics["rollout/tokens_per_s"] = sum(w.get("rollout/generated_tokens", [])) / elapsed
        metrics["learner/tokens_per_s"] = sum(w.get("learner/consumed_tokens", [])) / elapsed
        stale = w.get("staleness/trained", [])
        if stale:
            metrics["staleness/mean"] = sum(stale) / len(stale)
            metrics["staleness/max"] = float(max(stale))
            for value, count in Counter(stale).items():
                metrics[f"staleness/hist_{int(value)}"] = float(count)
        now = time.time()
        busy = ray.get([a.busy_seconds.remote(since, now) for a in self.rollouts])
        metrics["rollout/idle_fraction"] = 1.0 - sum(busy) / (elapsed * len(busy))
        metrics["learner/idle_fraction"] = self.learner_busy.idle_fraction(since)
        metrics["staleness/version"] = float(self.version)
        return metrics

    def emit(self, step: int, metrics: dict[str, float]) -> None:
        self.history.append({"step": step, **metrics})
        for sink in self.sinks:
            sink.log(step, metrics)

    def shutdown(self) -> None:
        """Stop the actors this driver started."""
        for actor in self.rollouts:
            try:
                ray.get(actor.close.remote(), timeout=30)
            except Exception as exc:  # shutting down anyway; report, do not mask the run's own error
                log.warning("rollout actor close failed: %s", exc)
            ray.kill(actor)
        self.learners.shutdown()
        for sink in self.sinks:
            sink.close()
