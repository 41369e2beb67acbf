"""Deadlines on Ray calls: every wait that could hang names the actors, the call and the setting."""

from __future__ import annotations

import time

import ray


class RemoteCallTimeout(TimeoutError):
    """Some calls of a batch did not finish in time; ``pending`` holds their positions in the batch."""

    def __init__(self, message: str, pending: list[int]):
        super().__init__(message)
        self.pending = pending


def wait_all(refs: list, timeout_s: float, what: str, setting: str, names: list[str] | None = None) -> list:
    """ray.get with a deadline; on timeout the error names the unfinished actors (``names``, one per
    ref), the call and the config key that sets the deadline."""
    start = time.monotonic()
    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    if pending:
        late = [i for i, ref in enumerate(refs) if ref in set(pending)]
        who = ", ".join(names[i] for i in late) if names else f"{len(pending)} of {len(refs)} calls"
        raise RemoteCallTimeout(
            f"{what}: {who} unfinished after {time.monotonic() - start:.0f}s ({setting}={timeout_s})", late)
    return ray.get(refs, timeout=0)  # all ready
