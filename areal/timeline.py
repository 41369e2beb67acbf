"""Busy/idle bookkeeping for an actor, with an injectable clock."""

from __future__ import annotations

import time
from typing import Callable


class BusyTracker:
    """Counts overlapping work items; the actor is busy while at least one is open.

    Keeps the closed busy intervals so a run report can draw a timeline, and
    answers the idle fraction over any window. ``clock`` defaults to wall time
    (comparable across processes and nodes); simulations pass virtual time.
    """

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._open = 0
        self._since: float | None = None
        self.created = clock()
        self.intervals: list[tuple[float, float]] = []

    @property
    def open_since(self) -> float | None:
        """Start of the busy interval still open, or None while idle."""
        return self._since

    def start(self) -> None:
        """One work item began."""
        if self._open == 0:
            self._since = self._clock()
        self._open += 1

    def end(self) -> None:
        """One work item finished."""
        if self._open <= 0:
            raise RuntimeError("BusyTracker.end without a matching start")
        self._open -= 1
        if self._open == 0:
            self.intervals.append((self._since, self._clock()))
            self._since = None

    def spans(self, since: float | None = None, until: float | None = None) -> list[tuple[float, float]]:
        """Busy intervals clipped to [since, until] (defaults: creation, now), the open one included."""
        lo = self.created if since is None else since
        hi = self._clock() if until is None else until
        spans = self.intervals + ([(self._since, hi)] if self._since is not None else [])
        return [(max(a, lo), min(b, hi)) for a, b in spans if min(b, hi) > max(a, lo)]

    def busy_seconds(self, since: float | None = None, until: float | None = None) -> float:
        """Busy time inside [since, until] (defaults: creation, now), open work included."""
        return sum(b - a for a, b in self.spans(since, until))

    def idle_fraction(self, since: float | None = None, until: float | None = None) -> float:
        """1 - busy / elapsed over the window; 0 for an empty window."""
        lo = self.created if since is None else since
        hi = self._clock() if until is None else until
        return 0.0 if hi <= lo else 1.0 - self.busy_seconds(lo, hi) / (hi - lo)
