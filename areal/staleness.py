"""Bounded-staleness admission control for asynchronous rollouts (AReaL §5.1).

The controller asks ``capacity()`` before starting a rollout and reports what
happened to it through ``on_submit`` / ``on_accept`` / ``on_reject``; the
trainer reports each new policy version through ``set_version``. The gate is
synchronous arithmetic over four counters: no locks, no asyncio, no refusal.
The caller decides; the gate only counts and answers.

Units: one submission is one unit of the train batch. The areal controller
submits one *group* (a prompt with its n samples) at a time, so ``batch_size``
is the number of groups per train step.

Rule (ALGORITHMS.md §1)::

    capacity = min(max_concurrent - running,
                   (max_staleness + version + 1) * batch_size - (accepted + running))

i.e. the N-th unit (N = accepted + running + 1) may start only while
``floor((N - 1) / B) <= version + eta``: if units were trained in the order
they started, unit N would land in batch ``floor((N - 1) / B)`` and so be at
most eta versions old.

Rollouts finish out of order, though: a long generation can start at version
v, and while it runs the shorter ones behind it fill batches and advance the
version. The capacity rule alone therefore does not bound the staleness of
what is trained. ``is_fresh(start_version)`` closes the gap: if accepted units
are trained first-in first-out, the next accepted unit lands in batch
``floor(accepted / B)``, so it is admitted to the buffer only when that batch
index minus its start version is at most eta. A finished unit that fails the
check is rejected (its slot returns) and its prompt is generated again.
Together they give the invariant the tests check: every unit trained in the
update that produces version v+1 started at a version >= v - eta.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class _Counters:
    submitted: int = 0
    running: int = 0
    accepted: int = 0
    rejected: int = 0
    version: int = 0


class StalenessGate:
    """Admission arithmetic bounding how stale trained rollouts may be (AReaL §5.1)."""

    def __init__(self, batch_size: int, max_staleness: int, max_concurrent: int):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"StalenessGate: batch_size must be an int >= 1, got {batch_size!r}")
        if not isinstance(max_staleness, int) or max_staleness < 0:
            raise ValueError(
                f"StalenessGate: max_staleness must be an int >= 0 (0 = synchronous), got {max_staleness!r}"
            )
        if not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ValueError(f"StalenessGate: max_concurrent must be an int >= 1, got {max_concurrent!r}")
        self.batch_size = batch_size
        self.max_staleness = max_staleness
        self.max_concurrent = max_concurrent
        self._c = _Counters()

    # -- read-only views -------------------------------------------------
    @property
    def version(self) -> int:
        return self._c.version

    @property
    def running(self) -> int:
        return self._c.running

    @property
    def accepted(self) -> int:
        return self._c.accepted

    @property
    def submitted(self) -> int:
        return self._c.submitted

    @property
    def rejected(self) -> int:
        return self._c.rejected

    # -- the rule --------------------------------------------------------
    def capacity(self) -> int:
        """How many more units may start now; may be negative (never clamped)."""
        c = self._c
        by_concurrency = self.max_concurrent - c.running
        by_staleness = (self.max_staleness + c.version + 1) * self.batch_size - (c.accepted + c.running)
        return min(by_concurrency, by_staleness)

    def next_train_version(self) -> int:
        """The version whose update will consume the next accepted unit (FIFO training)."""
        return self._c.accepted // self.batch_size

    def staleness_if_accepted(self, start_version: int) -> int:
        """Versions between ``start_version`` and the update that would train the next accepted unit."""
        return self.next_train_version() - start_version

    def is_fresh(self, start_version: int) -> bool:
        """Whether a unit started at ``start_version`` may be accepted without exceeding eta."""
        return self.staleness_if_accepted(start_version) <= self.max_staleness

    # -- events ----------------------------------------------------------
    def on_submit(self) -> None:
        """A unit started generating."""
        self._c.submitted += 1
        self._c.running += 1

    def on_accept(self) -> None:
        """A unit finished and entered the training buffer."""
        self._finish("on_accept")
        self._c.accepted += 1

    def on_reject(self) -> None:
        """A unit finished but was dropped (filtered or too stale); its slot returns."""
        self._finish("on_reject")
        self._c.rejected += 1

    def set_version(self, version: int) -> None:
        """The trainer published ``version``; versions never go backwards."""
        if version < self._c.version:
            raise ValueError(
                f"StalenessGate.set_version: version went backwards: current {self._c.version}, got {version}"
            )
        self._c.version = version

    def restore(self, version: int, buffered: int = 0) -> None:
        """Reset after loading a checkpoint taken at ``version``.

        Rollouts that were in flight are re-submitted by the caller, so running
        restarts at 0. ``accepted`` restarts at ``version * batch_size`` plus
        the units restored into the buffer (``buffered``, 0 when the buffer is
        not part of the checkpoint).
        """
        if version < 0 or buffered < 0:
            raise ValueError(f"StalenessGate.restore: version and buffered must be >= 0, got {version}, {buffered}")
        self._c = _Counters(
            submitted=self._c.submitted,
            running=0,
            accepted=version * self.batch_size + buffered,
            rejected=self._c.rejected,
            version=version,
        )

    # -- persistence and metrics -----------------------------------------
    def state_dict(self) -> dict[str, int]:
        """Counters and settings, for exact resume."""
        return {
            **asdict(self._c),
            "batch_size": self.batch_size,
            "max_staleness": self.max_staleness,
            "max_concurrent": self.max_concurrent,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore counters saved by ``state_dict``; settings must match this gate's."""
        for key in ("batch_size", "max_staleness", "max_concurrent"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"StalenessGate.load_state_dict: {key} in the checkpoint is {state[key]}, "
                    f"this gate has {getattr(self, key)}; resume with the same config"
                )
        self._c = _Counters(**{k: int(state[k]) for k in asdict(_Counters())})

    def metrics(self) -> dict[str, float]:
        """Counter snapshot under the ``staleness/`` namespace."""
        c = self._c
        return {
            "staleness/version": c.version,
            "staleness/submitted": c.submitted,
            "staleness/running": c.running,
            "staleness/accepted": c.accepted,
            "staleness/rejected": c.rejected,
            "staleness/capacity": self.capacity(),
        }

    def _finish(self, event: str) -> None:
        if self._c.running <= 0:
            raise RuntimeError(
                f"StalenessGate.{event}: no unit is running (running={self._c.running}, "
                f"submitted={self._c.submitted}); every finish must follow an on_submit"
            )
        self._c.running -= 1
