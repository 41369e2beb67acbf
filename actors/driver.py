"""The driver: starts the actors and runs the controller loop (gate, submit, collect, train, publish).

It holds no algorithm math and no scheduling policy: admission, acceptance and
the ticket ledger are ``areal.controller``, balancing is ``areal.balancer``,
advantages are ``areal.batching`` / ``areal.algos``, the update is the learner's.
Failures are handled here: a rollout worker that fails is replaced and its
rollouts requeued once; a learner group that fails (or whose exported weights were lost
with its node) is rebuilt from the newest checkpoint (the controller rolls back with it), up to
``learner.max_restarts``.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

import numpy as np

import ray

from actors.learner_group import LearnerGroup
from actors.milestones import MILESTONE
from actors.remote_calls import RemoteCallTimeout, wait_all
from actors.rollout_fleet import Publication, RolloutFleet, WeightsLost
from actors.step_metrics import StepMetrics
from areal.balancer import StepObservation, ThroughputBalancer
from areal.config import TrainConfig
from areal.controller import ACCEPTED, RolloutController, stall_message
from areal.evaluation import describe_set, record_set
from areal.fingerprint import run_fingerprint
from areal.staleness import StalenessGate
from areal.types import Trajectory
from rollouts.tasks.base import Task

log = logging.getLogger(__name__)
CONTROLLER_FILE = "controller.json"  # beside the learner state in every checkpoint


def evaluation_due(version: int, cfg: TrainConfig) -> bool:
    """Whether a held-out evaluation follows the update to ``version`` (the last one has its own)."""
    return cfg.eval_every > 0 and version % cfg.eval_every == 0 and version < cfg.total_steps


def publish_due(version: int, last_sent: int, cfg: TrainConfig) -> bool:
    """Whether the learners' ``version`` goes to the engines, the last one sent them being ``last_sent``:
    every rollout.sync_every versions (at most algo.max_staleness; every version in deterministic runs), and
    always before an evaluation and at the last step (so both see the newest weights)."""
    every = 1 if cfg.controller.deterministic else min(cfg.rollout.sync_every, max(1, cfg.algo.max_staleness))
    return version - last_sent >= every or evaluation_due(version, cfg) or version >= cfg.total_steps


class MetricsSink(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def close(self) -> None: ...


class Batcher(Protocol):
    """Turns accepted groups into a learner batch (``areal.batching``); its state is part of the run's."""

    action_unit: str

    def build(self, groups: list) -> Any: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class RunStalled(RuntimeError):
    """The run stopped accepting rollouts (``controller.max_unaccepted_groups``)."""


class Driver:
    """Runs one asynchronous RL job on an already initialised Ray."""

    def __init__(self, cfg: TrainConfig, model_path: str, task: Task, batcher: Batcher, sinks: list[MetricsSink],
                 use_gpu: bool = False, resume: tuple[Path, dict] | None = None):
        """``batcher``: builds learner batches (tokens or denoising chains); ``resume``: (checkpoint directory,
        its verified manifest) to continue from."""
        self.cfg, self.task, self.batcher, self.sinks = cfg, task, batcher, sinks
        # held-out score: greedy accuracy of text, reward of fixed-seed images
        self.eval_key = "eval/reward" if cfg.is_diffusion else "eval/accuracy"
        self.model_path, self.use_gpu = model_path, use_gpu
        self.fingerprint = run_fingerprint(cfg, task.digest(), model_path)  # what its checkpoints depend on
        self.eval_plan = cfg.task.eval_plan()  # samples per prompt of each held-out set
        self.out_dir = Path(cfg.out_dir)
        self.deterministic = cfg.controller.deterministic
        self.tag = f"areal-{uuid.uuid4().hex[:8]}"
        gate = StalenessGate(cfg.batch_size, cfg.algo.max_staleness, cfg.rollout.max_concurrent)
        self.controller = RolloutController(gate, len(task.train), cfg.algo.filter_zero_variance, cfg.seed)
        self.balancer = None
        if cfg.controller.balance and not self.deterministic:
            low, high = cfg.rollout.worker_budget
            self.balancer = ThroughputBalancer(
                min(cfg.controller.min_in_flight, cfg.rollout.max_concurrent), cfg.rollout.max_concurrent, low,
                high, cfg.controller.target_idle, cooldown_s=cfg.controller.scale_cooldown_s)
        self.version = 0  # updates the learners have made
        self.published = 0  # version the rollout engines run
        if resume is not None:
            self.restore_controller(resume[0], int(resume[1]["version"]))
            log.info("resuming from %s at version %d", resume[0], self.version, extra=MILESTONE)
        # where a failed learner group goes back to when no checkpoint was written yet
        self.start_checkpoint = str(resume[0]) if resume else ""
        self.start_state, self.start_version = self.run_state(), self.version
        if cfg.learner.byzantine.ranks:
            log.warning("BYZANTINE SIMULATION ON: learner ranks %s send %r gradients; aggregator %s with f=%d "
                        "(learner.byzantine: for robustness experiments only)", cfg.learner.byzantine.ranks,
                        cfg.learner.byzantine.attack, cfg.learner.aggregator, cfg.learner.aggregator_f)
        self.fleet = RolloutFleet(cfg, model_path, use_gpu, self.tag)
        for _ in range(cfg.rollout.workers):
            self.fleet.start_worker()
        self.learner_restarts = 0
        self.learners = LearnerGroup(cfg, model_path, use_gpu, self.start_checkpoint, f"{self.tag}-g0")
        # the newest exported weights (what workers that join load) and their version
        self.payload, self.payload_version = self.learners.weights_payload(), self.version
        self.fleet.poll_starting(self.payload, self.version, block=True)
        if not self.fleet.serving():
            raise RuntimeError("no rollout worker started; see the errors above (rollout.start_timeout_s)")
        log.info("actors up: %d rollout worker(s), %d learner(s)", len(self.fleet.serving()), cfg.learner.workers,
                 extra=MILESTONE)
        self.published = self.version  # what every serving engine has loaded: the gate's version
        self.publishing: Publication | None = None  # a newer version on its way to the engines
        self.publish_started, self.sync_stats = 0.0, {}
        self.training: list[ray.ObjectRef] = []
        self.training_started = 0.0
        self.training_ended: float | None = None  # when the driver saw the last train step finish
        self.trained_tickets: list[int] = []
        self.metrics = StepMetrics(self.out_dir / "timeline.jsonl", batcher.action_unit)
        self.history: list[dict[str, float]] = []
        self.unaccepted_reward_failures, self.reward_failure_example = 0, ""

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train until the learners hold version ``total_steps``; returns the run summary."""
        start = time.time()
        initial, initial_outputs = self.evaluate()
        self.emit(self.version, initial)
        loop_started = time.time()
        self.metrics.new_window()
        while self.version < self.cfg.total_steps:
            if not self.training:
                self.training = self.maybe_train()
            try:
                self.fleet.poll_starting(self.payload, self.payload_version)
            except WeightsLost as exc:  # lost with the learners' node: how an idle group's loss shows first
                self.recover_learners(exc)
            self.fleet.reap()
            self.land_publication(block=False)
            self.submit()
            self.collect()
            self.check_progress()
            if not self.deterministic:  # refill at once: the gap between two rollouts is rollout idle time
                self.submit()
            for worker, reason in self.fleet.overdue().items():
                self.requeue(self.fleet.fail(worker, reason))
            if self.training and self.training_done():
                self.finish_step()
        loop_seconds = time.time() - loop_started
        final, final_outputs = self.evaluate()
        self.emit(self.version, final)
        checkpoint = self.save_checkpoint()
        stale = [h["staleness/max"] for h in self.history if "staleness/max" in h]
        return {
            "eval_metric": self.eval_key, "initial_eval": initial[self.eval_key],
            "final_eval": final[self.eval_key], "steps": self.version,
            "seconds": time.time() - start, "train_loop_seconds": loop_seconds, "checkpoint": checkpoint,
            "outcomes": dict(self.controller.outcomes), "ledger": self.controller.ledger(),
            "rollout_engine_versions": self.fleet.engine_versions(),
            # weights reached the engines: held-out outputs (greedy texts, fixed-seed images) that changed
            "eval_outputs_changed": sum(not np.array_equal(a, b) for a, b in zip(initial_outputs, final_outputs)),
            "max_trained_staleness": max(stale, default=0.0),
            "duplicate_trained_tickets": len(self.trained_tickets) - len(set(self.trained_tickets)),
            "rollout_failures": self.fleet.failures, "learner_restarts": self.learner_restarts,
            "rollout_workers": len(self.fleet.serving()), "rollout_workers_starting": len(self.fleet.starting),
        }

    def submit(self) -> None:
        """Start rollouts while the gate (and the balancer's limit) has room and a worker serves."""
        while self.fleet.serving() and (rollout := self.controller.next_rollout()) is not None:
            self.fleet.submit(rollout, self.task.train[rollout.prompt])

    def collect(self) -> None:
        """Hand finished groups to the controller. Asynchronous: whatever finishes within a second (or the
        train step, if sooner). Deterministic: every rollout in flight, in submission order."""
        if self.deterministic:
            refs = self.fleet.finished(self.cfg.rollout.generate_timeout_s)
        else:
            ray.wait(list(self.fleet.pending) + self.training[:1], num_returns=1, timeout=1.0)
            refs = self.fleet.finished()
        for ref in refs:
            if ref not in self.fleet.pending:
                continue  # its worker failed while handling an earlier result: already requeued
            pending, group = self.fleet.take(ref)
            if isinstance(group, Exception):
                if pending.worker in self.fleet.actors:
                    self.requeue(self.fleet.fail(pending.worker, f"run_group(ticket {pending.ticket}) raised: {group}",
                                                 held=(pending.ticket,)))
                else:
                    self.requeue([pending.ticket])
                continue
            group.info["ticket"] = pending.ticket
            latency = time.monotonic() - pending.submitted
            self.metrics.record("rollout/latency", latency)
            if "engine_seconds" in group.info:  # where the latency went: engine, reward, or waiting for either
                engine, reward = group.info["engine_seconds"], group.info["reward_seconds"]
                self.metrics.record("rollout/engine_seconds", engine)
                self.metrics.record("rollout/reward_seconds", reward)
                self.metrics.record("rollout/queue_seconds", max(0.0, latency - engine - reward))
            for key, value in group.info.get("episode_stats", {}).items():  # multi-turn episodes' shape
                self.metrics.record(f"agent/{key}", value)
            self.record_shape(group)
            outcome = self.controller.on_group(pending.ticket, group)
            self.metrics.record("rollout/generated", group.num_actions)
            self.metrics.record("rollout/samples", len(group.trajectories))
            self.metrics.record(f"rollout/{outcome}", 1)
            failures = sum(group.info.get("reward_failures", {}).values())
            self.unaccepted_reward_failures = 0 if outcome == ACCEPTED else self.unaccepted_reward_failures + failures
            if failures:
                self.reward_failure_example = str(group.info.get("reward_failure_example"))
                self.metrics.record("rollout/reward_failures", failures)
                log.warning("%s: reward failures in group %s: %s", self.fleet.name(pending.worker), group.prompt_id,
                            group.info.get("reward_failure_example"))
            if outcome == ACCEPTED:
                self.metrics.record("rollout/reward", *group.rewards)

    def record_shape(self, group) -> None:
        """What a reasoning run watches, for every generated group: completion and prompt lengths, completions
        cut by the token budget, and each reward function's values and failures."""
        texts = [t for t in group.trajectories if isinstance(t, Trajectory)]
        if texts:
            self.metrics.record("rollout/completion_tokens", *[len(t.output_ids) for t in texts])
            self.metrics.record("rollout/truncated", *[float(t.finish_reason == "length") for t in texts])
            self.metrics.record("rollout/prompt_tokens", len(texts[0].prompt_ids))
        for name, values in group.info.get("reward_components", {}).items():
            self.metrics.record(f"reward/{name}", *[v for v in values if v is not None and not math.isnan(v)])
            self.metrics.record(f"reward/{name}_failures", sum(v is not None and math.isnan(v) for v in values))
        if group.info.get("prompt_too_long"):
            self.metrics.record("rollout/prompt_too_long", 1)
        for name, values in group.info.get("reward_logged", {}).items():  # what TRL-style functions log_metric
            self.metrics.record(f"reward/{name}", *values)

    def check_progress(self) -> None:
        """Stop a run that generates without accepting anything, saying why (it would never end)."""
        limit = self.cfg.controller.max_unaccepted_groups
        if self.controller.stalled(limit):
            raise RunStalled(stall_message(self.controller.since_accepted, limit, self.unaccepted_reward_failures,
                                           self.reward_failure_example))

    def requeue(self, tickets: list[int]) -> None:
        for ticket in tickets:
            self.controller.on_failure(ticket)

    def maybe_train(self) -> list[ray.ObjectRef]:
        """Start a train step on the oldest B accepted groups, if there are B."""
        if self.version >= self.cfg.total_steps:
            return []
        groups = self.controller.take_batch()
        if groups is None:
            return []
        began = time.monotonic()
        batch = self.batcher.build(groups)
        self.metrics.record("driver/batch_seconds", time.monotonic() - began)
        if self.training_ended is not None:  # export, waiting for groups, batching and the calls between
            self.metrics.record("learner/gap_seconds", began - self.training_ended)
        for group in groups:
            self.metrics.record("staleness/trained", *[self.version - group.submit_version] * len(group.trajectories))
            self.trained_tickets.append(group.info.get("ticket", -1))
        self.metrics.record("learner/consumed", batch.num_actions)
        self.metrics.learner.start()
        self.training_started = time.monotonic()
        return self.learners.train_step_async(batch)

    def training_done(self) -> bool:
        if self.deterministic:
            return True  # finish_step waits for it: weights change only between generation rounds
        if not ray.wait(self.training, num_returns=len(self.training), timeout=0)[1]:
            return True
        # past the deadline: finish_step's wait raises the timeout and the group is restored
        return time.monotonic() - self.training_started > self.cfg.learner.step_timeout_s

    def finish_step(self) -> None:
        """Stats in, version v+1 exported (and checkpointed when due) before the next step starts; the
        engines load it while the learners already train the step after."""
        try:
            left = self.cfg.learner.step_timeout_s - (time.monotonic() - self.training_started)
            stats = LearnerGroup.merge_stats(wait_all(self.training, max(left, 0.0), "train_step",
                                                      "learner.step_timeout_s", self.learners.names))
            self.training = []
            self.metrics.learner.end()
            self.training_ended = time.monotonic()
            train_seconds = self.training_ended - self.training_started
            self.version += 1
            publish = publish_due(self.version, self.payload_version, self.cfg)
            if publish:
                # learners keep only their newest export (bucket files in RAM), so the version on its way to the
                # engines must have landed before the next one replaces it
                self.land_publication(block=True)
                exporting = time.monotonic()
                self.payload, self.payload_version = self.learners.weights_payload(), self.version
                self.metrics.record("weights/export_seconds", time.monotonic() - exporting)
            if self.cfg.checkpoint.every and self.version % self.cfg.checkpoint.every == 0 and \
                    self.version < self.cfg.total_steps:
                self.save_checkpoint()
        except (ray.exceptions.RayError, RemoteCallTimeout) as exc:
            self.recover_learners(exc)
            return
        if not self.deterministic:
            self.training = self.maybe_train()
        evaluating = evaluation_due(self.version, self.cfg)
        if publish:  # waited for only where the next thing needs the engines on it
            self.publish(block=self.deterministic or evaluating or self.version >= self.cfg.total_steps)
        stats.update(self.sync_stats)  # a version that reached the engines since the last step
        self.sync_stats = {}
        metrics = self.metrics.step(stats, self.fleet.timelines(self.metrics.window_start))
        metrics["staleness/version"] = float(self.version)
        if self.balancer is not None:
            metrics.update(self.balance(metrics, train_seconds))
        if evaluating:
            metrics.update(self.evaluate()[0])
        self.emit(self.version, metrics)

    def publish(self, block: bool) -> None:
        """Ship ``self.payload`` to every rollout worker. Without ``block`` the loop goes on (collecting,
        submitting, starting the next update) while the engines reload; the gate moves on once they all
        have it (``land_publication``). One version travels at a time."""
        self.land_publication(block=True)
        self.publishing = self.fleet.start_publish(self.payload, self.payload_version)
        self.publish_started = time.time()
        if block:
            self.land_publication(block=True)

    def land_publication(self, block: bool) -> None:
        """Once every engine has the version in flight (or failed, then replaced), the gate moves to it."""
        if self.publishing is None:
            return
        result = self.fleet.finish_publish(self.publishing, block)
        if result is None:
            return
        (seconds, requeue), version, self.publishing = result, self.publishing.version, None
        self.requeue(requeue)
        self.published = version
        self.controller.on_trained(version)
        end = time.time()
        self.metrics.sync(self.publish_started, end)
        self.sync_stats = {"weights/sync_seconds": end - self.publish_started,
                           "weights/load_seconds_max": max(seconds, default=0.0)}

    def balance(self, metrics: dict[str, float], train_seconds: float) -> dict[str, float]:
        """One balancer decision per step, applied to the controller and the fleet."""
        obs = StepObservation(
            learner_idle=metrics["learner/idle_fraction"], rollout_idle=metrics["rollout/idle_fraction"],
            backlog=len(self.controller.buffer), batch_size=self.cfg.batch_size, train_seconds=train_seconds,
            rollout_latency=metrics.get("rollout/latency_mean"), limit_bound=self.controller.blocked["limit"] > 0,
            gate_bound=self.controller.blocked["gate"] > 0,
            workers=len(self.fleet.serving()), starting=len(self.fleet.starting))
        self.controller.blocked.clear()
        decision = self.balancer.on_step(obs)
        if decision.in_flight_limit != self.controller.in_flight_limit or decision.add_workers:
            # a new in-flight limit comes most steps (driver.log only); a change of the worker count is rare
            log.log(logging.INFO if decision.add_workers else logging.DEBUG, "balancer: %s (in-flight limit %d, "
                    "workers %+d)", decision.reason, decision.in_flight_limit, decision.add_workers, extra=MILESTONE)
        self.controller.in_flight_limit = decision.in_flight_limit
        if decision.add_workers > 0:
            self.fleet.start_worker()
        elif decision.add_workers < 0:
            self.fleet.retire_one()
        return {"controller/in_flight_limit": float(decision.in_flight_limit), "controller/backlog_groups":
                float(obs.backlog), "controller/gain": self.balancer.gain,
                "rollout/workers": float(len(self.fleet.serving()))}

    # -- failures and checkpoints -----------------------------------------------------------------
    def recover_learners(self, exc: Exception) -> None:
        """Rebuild the learner group from the newest good checkpoint (or the run's start) and roll the
        controller back to it; in-flight rollouts are voided (their prompts are in the saved retry queue)."""
        from learners.checkpoint import CheckpointStore

        self.learner_restarts += 1
        if self.learner_restarts > self.cfg.learner.max_restarts:
            raise RuntimeError(f"learner group failed {self.learner_restarts} times (learner.max_restarts="
                               f"{self.cfg.learner.max_restarts}); last error: {exc}. Fix the cause and continue "
                               f"with checkpoint.resume=true (out_dir={self.out_dir})") from exc
        found = CheckpointStore(self.out_dir / "checkpoints", self.cfg.checkpoint.keep_last).latest_valid()
        source = str(found[0]) if found else self.start_checkpoint
        log.error("learner group failed (%s); restoring from %s (restart %d of learner.max_restarts=%d)", exc,
                  source or "the initial model", self.learner_restarts, self.cfg.learner.max_restarts)
        self.learners.shutdown()
        self.fleet.void_all()
        self.training = []
        if self.metrics.learner.open_since is not None:
            self.metrics.learner.end()
        if found:
            self.restore_controller(found[0], int(found[1]["version"]))
        else:
            self.load_run_state(self.start_state, self.start_version)
        # tickets after the restored point are issued again: forget that they were trained
        self.trained_tickets = self.trained_tickets[:(self.version - self.start_version) * self.cfg.batch_size]
        self.learners = LearnerGroup(self.cfg, self.model_path, self.use_gpu, source,
                                     f"{self.tag}-g{self.learner_restarts}")
        self.publishing = None  # its weights came from the failed group; the engines get the restored ones next
        self.payload, self.payload_version = self.learners.weights_payload(), self.version
        self.publish(block=True)

    def run_state(self) -> dict:
        return {"controller": self.controller.state_dict(), "batcher": self.batcher.state_dict(),
                "balancer": self.balancer.state_dict() if self.balancer else None}

    def load_run_state(self, state: dict, version: int) -> None:
        self.controller.load_state_dict(state["controller"], version)
        self.batcher.load_state_dict(state.get("batcher") or {})
        if self.balancer is not None and state.get("balancer"):
            self.balancer.load_state_dict(state["balancer"])
            self.controller.in_flight_limit = self.balancer.limit
        self.version = version

    def restore_controller(self, checkpoint: Path, version: int) -> None:
        self.load_run_state(json.loads((Path(checkpoint) / CONTROLLER_FILE).read_text()), version)

    def save_checkpoint(self) -> str:
        """Learners, controller (buffered samples included) and balancer, as one verified checkpoint."""
        start = time.time()
        extra = {CONTROLLER_FILE: json.dumps(self.run_state()).encode()}
        meta = {"step": self.version, "version": self.version, "seed": self.cfg.seed,
                "ledger": self.controller.ledger(),
                "fingerprint": self.fingerprint}
        path = self.learners.save_checkpoint(str(self.out_dir / "checkpoints"), meta, extra)
        log.info("checkpoint %s (%.1fs)", path, time.time() - start, extra=MILESTONE)
        return path

    # -- evaluation and metrics -------------------------------------------------------------------
    def evaluate(self) -> tuple[dict[str, float], list]:
        """Every held-out set under the engines' weights (split across rollout workers): its metrics under
        eval/ (the default set) or eval/<name>/ (``areal.evaluation.summarize``), its generations written to
        RUN_DIR/generations/<set>/step-N.jsonl, images also as a grid, RUN_DIR/samples/step-N.png. Returns
        (metrics, the default set's outputs in order). A held-out reward that failed is no score: the means
        are over the others (NaN if none), and the failures are counted."""
        started = time.monotonic()  # the engines run self.published: an evaluation step's publish waits
        metrics, outputs, lines = {}, [], []
        threshold = None if self.cfg.is_diffusion else self.cfg.task.correct_threshold
        for name, samples in self.task.eval_sets.items():
            k = self.eval_plan.get(name, 0)
            records = self.fleet.evaluate(list(samples), name, k, self.payload, self.published)
            found = record_set(name, records, threshold, k, self.published, self.out_dir)
            metrics.update(found)
            failed = [r.greedy for r in records if not r.greedy.ok]
            if failed:
                log.warning("held-out set %s: %d of %d rewards failed (left out of its metrics), e.g. %s: %s", name,
                            len(failed), len(records), failed[0].status, failed[0].detail)
            lines.append(describe_set(name, found, k))
            if name == "eval":
                outputs = [r.greedy.output for r in records]
        if outputs and isinstance(outputs[0], np.ndarray):
            from rollouts.image_grid import save_grid

            save_grid(outputs, self.out_dir / "samples" / f"step-{self.published:06d}.png")
        log.info("step %d: held-out %s", self.version, "; ".join(lines), extra=MILESTONE)
        # eval/seconds: so a training clock can leave evaluation out (bench/vs_trl.py)
        metrics["eval/seconds"] = time.monotonic() - started
        return metrics, outputs

    def emit(self, step: int, metrics: dict[str, float]) -> None:
        self.history.append({"step": step, **metrics})
        for sink in self.sinks:
            sink.log(step, metrics)

    def shutdown(self) -> None:
        """Stop the actors this driver started."""
        self.fleet.shutdown()
        self.learners.shutdown()
        self.metrics.close()
        for sink in self.sinks:
            sink.close()
