"""The rollout actors of one run: started, serving, draining, failed and replaced.

Mechanism only: the controller (``areal.controller``) decides what to generate and
the balancer (``areal.balancer``) how many actors to keep; this class owns the Ray
handles, the calls in flight and the restart budget. A worker that dies, raises
or misses a deadline is killed and replaced, and the tickets it held are handed
back to the caller (which requeues each exactly once).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
import ray

from actors.remote_calls import RemoteCallTimeout, wait_all
from actors.rollout_actor import RolloutActor, rollout_env
from areal.config import TrainConfig
from areal.controller import Rollout
from areal.weight_sync import WeightsUnavailable
from areal.worker_pool import LeastLoaded
from rollouts.tasks.base import TaskSample

log = logging.getLogger(__name__)


class WeightsLost(RuntimeError):
    """The weights a joining worker was to load are in no object store any more: they were lost with the
    learners' node, so the learners must be restored; the worker is not at fault."""


@dataclass(frozen=True)
class Pending:
    ticket: int
    worker: int
    submitted: float  # time.monotonic() at submission


@dataclass(frozen=True)
class Publication:
    """A weight version on its way to the workers that were serving when it was sent."""
    version: int
    refs: dict[int, ray.ObjectRef]  # worker -> its load_weights call
    started: float  # time.monotonic()


class RolloutFleet:
    """Rollout actors with a least-loaded pick, deadlines and a restart budget."""

    def __init__(self, cfg: TrainConfig, model_path: str, use_gpu: bool, tag: str):
        self.cfg, self.model_path, self.use_gpu, self.tag = cfg, model_path, use_gpu, tag
        self.actors: dict[int, ray.actor.ActorHandle] = {}
        self.starting: dict[int, tuple[ray.ObjectRef, float]] = {}  # worker -> (ready ref, started at)
        self.retiring: set[int] = set()
        self.pool = LeastLoaded()
        self.pending: dict[ray.ObjectRef, Pending] = {}
        self.restarts = 0
        self.failures: list[dict] = []  # one record per failed worker: who, why, which tickets went back
        self._next_id = 0

    # -- membership -------------------------------------------------------------------------------
    def name(self, worker: int) -> str:
        return f"RolloutActor {worker}"

    def start_worker(self) -> int:
        """Create one actor; it serves once its engine is up and has the current weights."""
        worker, self._next_id = self._next_id, self._next_id + 1
        actor = RolloutActor.options(
            name=f"{self.tag}-rollout-{worker}", num_cpus=self.cfg.rollout.num_cpus,
            num_gpus=self.cfg.rollout.num_gpus, resources=dict(self.cfg.rollout.resources),
            runtime_env={"env_vars": rollout_env(self.cfg, self.use_gpu)},
        ).remote(self.cfg, self.model_path, worker)
        self.actors[worker] = actor
        self.starting[worker] = (actor.ready.remote(), time.monotonic())
        return worker

    def poll_starting(self, payload: ray.ObjectRef, version: int, block: bool = False) -> list[int]:
        """Workers whose engine came up join the pool (after loading ``payload``, ``version``, when > 0).
        ``block``: wait until every starting worker is up. Returns the workers that joined."""
        joined = []
        while self.starting:
            refs = {ref: w for w, (ref, _) in self.starting.items()}
            ready, _ = ray.wait(list(refs), num_returns=len(refs) if block else 1,
                                timeout=self.cfg.rollout.start_timeout_s if block else 0)
            for ref in ready:
                worker = refs[ref]
                del self.starting[worker]
                try:
                    ray.get(ref, timeout=0)  # ready: ray.wait returned it
                    if version > 0:
                        wait_all([self.actors[worker].load_weights.remote(payload, version)],
                                 self.cfg.rollout.weight_sync_timeout_s, f"load_weights(version {version})",
                                 "rollout.weight_sync_timeout_s", [self.name(worker)])
                except (ray.exceptions.ObjectLostError, WeightsUnavailable) as exc:  # the weights are gone, not it
                    self.starting[worker] = (ref, time.monotonic())  # it joins once they are exported again
                    raise WeightsLost(f"the weights of version {version} are lost with the learners' node "
                                      f"({self.name(worker)} could not load them): {exc}") from exc
                except (ray.exceptions.RayError, RemoteCallTimeout) as exc:
                    self.fail(worker, f"start-up failed: {exc}")
                    continue
                self.pool.add(worker)
                joined.append(worker)
            now = time.monotonic()
            for worker, (_, started) in list(self.starting.items()):
                if now - started > self.cfg.rollout.start_timeout_s:
                    del self.starting[worker]
                    self.fail(worker, f"ready() unfinished after {now - started:.0f}s "
                                      f"(rollout.start_timeout_s={self.cfg.rollout.start_timeout_s})")
            if not block or not ready:
                break
        return joined

    def serving(self) -> list[int]:
        return sorted(self.pool.serving)

    def retire_one(self) -> int | None:
        """Stop feeding the least-loaded worker; it leaves once its rollouts finish (``reap``)."""
        if len(self.pool.serving) <= 1:
            return None
        worker = self.pool.least_loaded()
        self.pool.drain(worker)
        self.retiring.add(worker)
        return worker

    def reap(self) -> None:
        """Retiring workers with nothing in flight are shut down."""
        for worker in [w for w in self.retiring if self.pool.load.get(w, 0) == 0]:
            self.retiring.discard(worker)
            self._kill(worker, graceful=True)

    def fail(self, worker: int, reason: str, held: tuple[int, ...] = ()) -> list[int]:
        """Kill ``worker``, start a replacement, and return the tickets it held (to be requeued): those
        still pending plus ``held`` (a call of it already taken off the pending list, e.g. the one that
        raised)."""
        tickets = list(held) + [p.ticket for ref, p in list(self.pending.items()) if p.worker == worker]
        self.pending = {ref: p for ref, p in self.pending.items() if p.worker != worker}
        self.failures.append({"worker": worker, "reason": reason, "tickets": tickets, "time": time.time()})
        log.error("%s failed (%s); %d rollouts requeued", self.name(worker), reason, len(tickets))
        retiring = worker in self.retiring
        self.retiring.discard(worker)
        self.starting.pop(worker, None)
        self._kill(worker, graceful=False)
        self.restarts += 1
        if self.restarts > self.cfg.rollout.max_restarts:
            raise RuntimeError(f"rollout workers failed {self.restarts} times (rollout.max_restarts="
                               f"{self.cfg.rollout.max_restarts}); last: {self.name(worker)}: {reason}")
        if not retiring:
            replacement = self.start_worker()
            log.warning("started %s to replace %s", self.name(replacement), self.name(worker))
        return tickets

    def _kill(self, worker: int, graceful: bool) -> None:
        actor = self.actors.pop(worker, None)
        self.pool.remove(worker)
        if actor is None:
            return
        if graceful:
            try:
                ray.get(actor.close.remote(), timeout=30)
            except Exception as exc:  # noqa: BLE001 - it is going away either way; say why it was untidy
                log.warning("%s close failed: %s", self.name(worker), exc)
        ray.kill(actor)

    # -- rollouts ---------------------------------------------------------------------------------
    def submit(self, rollout: Rollout, sample: TaskSample) -> bool:
        """Start ``rollout`` on the least-loaded serving worker; False when none serves."""
        if not self.pool.serving:
            return False
        worker = self.pool.pick()
        ref = self.actors[worker].run_group.remote(sample, rollout.version, rollout.seed)
        self.pending[ref] = Pending(rollout.ticket, worker, time.monotonic())
        return True

    def finished(self, timeout: float = 0.0) -> list[ray.ObjectRef]:
        """Rollout calls finished within ``timeout`` (0: those done now), in submission order."""
        refs = list(self.pending)
        if not refs:
            return []
        done = set(ray.wait(refs, num_returns=len(refs), timeout=timeout)[0])
        return [r for r in refs if r in done]

    def take(self, ref: ray.ObjectRef):
        """(pending record, group) of a finished call; the group is an exception if the call failed."""
        pending = self.pending.pop(ref)
        self.pool.release(pending.worker)
        try:
            return pending, ray.get(ref, timeout=0)  # finished: ``finished`` returned it
        except ray.exceptions.RayError as exc:
            return pending, exc

    def overdue(self) -> dict[int, str]:
        """Workers holding a rollout past ``rollout.generate_timeout_s``, with the error for each."""
        now, limit = time.monotonic(), self.cfg.rollout.generate_timeout_s
        late = {}
        for p in self.pending.values():
            if now - p.submitted > limit and p.worker not in late:
                late[p.worker] = (f"run_group(ticket {p.ticket}) unfinished after {now - p.submitted:.0f}s "
                                  f"(rollout.generate_timeout_s={limit})")
        return late

    def void_all(self) -> None:
        """Cancel every rollout in flight and forget it (after a rollback its results mean nothing)."""
        for ref, pending in self.pending.items():
            ray.cancel(ref)
            self.pool.release(pending.worker)
        self.pending.clear()

    # -- weights and evaluation -------------------------------------------------------------------
    def start_publish(self, payload: ray.ObjectRef, version: int) -> Publication:
        """Ask every live worker to load ``version``; returns at once (``finish_publish`` collects)."""
        workers = sorted(set(self.pool.serving) | self.retiring)
        refs = {w: self.actors[w].load_weights.remote(payload, version) for w in workers}
        return Publication(version, refs, time.monotonic())

    def finish_publish(self, publication: Publication, block: bool) -> tuple[list[float], list[int]] | None:
        """None while a worker is still loading (``block`` waits); then (seconds per worker, tickets to
        requeue). A worker that failed or missed ``rollout.weight_sync_timeout_s`` is replaced."""
        timeout = self.cfg.rollout.weight_sync_timeout_s
        refs = list(publication.refs.values())
        left = max(timeout - (time.monotonic() - publication.started), 0.0) if block else 0.0
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=left)
        if len(ready) < len(refs) and time.monotonic() - publication.started < timeout:
            return None
        seconds, requeue = [], []
        for worker, ref in publication.refs.items():
            if worker not in self.actors:
                continue  # failed for another reason meanwhile: already replaced
            if ref not in ready:
                requeue += self.fail(worker, f"load_weights(version {publication.version}) unfinished after "
                                             f"{timeout:.0f}s (rollout.weight_sync_timeout_s)")
                continue
            try:
                seconds.append(ray.get(ref, timeout=0))  # ready
            except ray.exceptions.RayError as exc:
                requeue += self.fail(worker, f"load_weights(version {publication.version}) raised: {exc}")
        return seconds, requeue

    def evaluate(self, samples: list[TaskSample], suite: str, k: int, payload: ray.ObjectRef, version: int) -> list:
        """Per-sample records of ``evaluate`` (the held-out set ``suite``, ``k`` samples per prompt) split across
        serving workers; retried on replacements if a worker fails (rollout.max_restarts bounds it)."""
        while True:
            if not self.pool.serving:
                self.poll_starting(payload, version, block=True)
                continue
            workers = self.serving()
            shards = [samples[i::len(workers)] for i in range(len(workers))]
            calls = [(w, s, self.actors[w].evaluate.remote(s, suite, k)) for w, s in zip(workers, shards) if s]
            try:
                parts = wait_all([ref for _, _, ref in calls], self.cfg.rollout.generate_timeout_s, "evaluate",
                                 "rollout.generate_timeout_s", [self.name(w) for w, _, _ in calls])
            except RemoteCallTimeout as exc:
                for i in exc.pending:
                    self.fail(calls[i][0], str(exc))
                continue
            except ray.exceptions.RayError:
                for worker, _, ref in calls:
                    try:
                        ray.get(ref, timeout=0)  # every call ended: wait_all raised the first error
                    except ray.exceptions.RayError as exc:
                        self.fail(worker, f"evaluate raised: {exc}")
                continue
            results = [None] * len(samples)
            for shard_index, part in enumerate(parts):  # empty shards are the trailing ones
                for j, result in enumerate(part):
                    results[shard_index + j * len(workers)] = result
            return results

    def timelines(self, since: float) -> dict[str, list[tuple[float, float]]]:
        """Busy intervals of every live worker since ``since`` (a dead one's are lost with it)."""
        workers = sorted(set(self.pool.serving) | self.retiring)
        refs = [self.actors[w].timeline.remote(since) for w in workers]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=30)
        out = {}
        for worker, ref in zip(workers, refs):
            if ref in ready:
                try:
                    out[f"rollout-{worker}"] = ray.get(ref, timeout=0)  # ready
                except ray.exceptions.RayError:
                    pass  # its failure surfaces through its rollouts
        return out

    def engine_versions(self, timeout_s: float = 60.0) -> list[int]:
        """Weight versions the serving engines report within ``timeout_s``; a worker that does not answer is
        left out and logged (the run's summary must not fail on a worker that hangs at the end)."""
        workers = self.serving()
        refs = [self.actors[w].stats.remote() for w in workers]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=timeout_s)[0])
        versions = []
        for worker, ref in zip(workers, refs):
            try:
                if ref not in ready:
                    raise TimeoutError(f"no answer within {timeout_s:.0f}s")
                versions.append(ray.get(ref, timeout=0)["version"])
            except (ray.exceptions.RayError, TimeoutError) as exc:
                log.warning("%s did not report its engine version: %s", self.name(worker), exc)
        return versions

    def shutdown(self) -> None:
        for worker in list(self.actors):
            self._kill(worker, graceful=True)
