"""Least-loaded choice among a changing set of workers, in O(log n) per decision."""

from __future__ import annotations

import heapq


class LeastLoaded:
    """Tracks rollouts in flight per worker and picks the least-loaded serving worker.

    A heap with lazy deletion: every load change pushes a fresh entry and stale
    entries are skipped when they surface, so a pick stays O(log n) at thousands
    of workers (a scan over all workers per submission does not). Ties go to the
    lowest worker id, which keeps choices reproducible.
    """

    def __init__(self):
        self.load: dict[int, int] = {}  # every known worker, serving or draining -> rollouts in flight
        self.serving: set[int] = set()
        self._heap: list[tuple[int, int]] = []

    def add(self, worker: int) -> None:
        """A worker starts serving."""
        if worker in self.load:
            raise ValueError(f"LeastLoaded.add: worker {worker} is already known")
        self.load[worker] = 0
        self.serving.add(worker)
        heapq.heappush(self._heap, (0, worker))

    def drain(self, worker: int) -> None:
        """Stop giving ``worker`` new rollouts (it is retiring or failed); its load stays counted."""
        self.serving.discard(worker)

    def remove(self, worker: int) -> None:
        """Forget ``worker`` entirely."""
        self.serving.discard(worker)
        self.load.pop(worker, None)

    def pick(self) -> int:
        """The serving worker with the fewest rollouts in flight; its load goes up by one."""
        while self._heap:
            load, worker = self._heap[0]
            if worker in self.serving and self.load.get(worker) == load:
                self._set(worker, load + 1)
                return worker
            heapq.heappop(self._heap)
        raise RuntimeError("LeastLoaded.pick: no rollout worker is serving")

    def release(self, worker: int) -> None:
        """One rollout on ``worker`` finished (or failed)."""
        if worker in self.load:
            self._set(worker, self.load[worker] - 1)

    def least_loaded(self) -> int | None:
        """The serving worker a retirement should take (fewest in flight), without changing loads."""
        return min(self.serving, key=lambda w: (self.load[w], w), default=None)

    def _set(self, worker: int, load: int) -> None:
        self.load[worker] = load
        if worker in self.serving:
            heapq.heappush(self._heap, (load, worker))
        if len(self._heap) > 4 * len(self.serving) + 64:  # stale entries pile up below the top: rebuild
            self._heap = [(self.load[w], w) for w in self.serving]
            heapq.heapify(self._heap)
