"""Which LoRA adapter each new request of an engine gets, and when a loaded adapter can go.

With ``learner.lora.sync=adapter`` a policy version is an adapter on the engine's unchanged base model. A request
keeps the adapter it started with to its last token, so every token it samples is tagged with one version and
no update pauses generation; an adapter is unloaded once a newer one is current and no request uses it.
Plain bookkeeping, no vLLM: the engine does the loading and unloading.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class LoadedAdapter:
    version: int
    request: object  # the engine's handle (vLLM's LoRARequest)
    path: str  # its folder, deleted when it is unloaded


class AdapterVersions:
    """The current adapter (None before the first: version ``initial`` is the base model itself) and the
    requests in flight on each loaded one."""

    def __init__(self, initial: int = 0):
        self.version, self.current = initial, None  # what new requests get
        self._loaded: dict[int, LoadedAdapter] = {}
        self._in_flight: Counter[int] = Counter()

    def make_current(self, adapter: LoadedAdapter) -> None:
        """New requests get ``adapter`` from now on; the one it replaces stays until its requests finish."""
        if adapter.version in self._loaded:
            raise ValueError(f"adapter version {adapter.version} is already loaded: reinstate it instead")
        self._loaded[adapter.version] = adapter
        self.version, self.current = adapter.version, adapter

    def get(self, version: int) -> LoadedAdapter | None:
        """The adapter loaded for ``version``, if any."""
        return self._loaded.get(version)

    def reinstate(self, version: int) -> LoadedAdapter:
        """Make the adapter already loaded for ``version`` current again: a version published a second time (a
        learner group restored from a checkpoint republishes the version it saved, which the engines usually
        serve already) holds the same weights, so nothing is loaded."""
        adapter = self._loaded[version]
        self.version, self.current = version, adapter
        return adapter

    def acquire(self) -> tuple[int, object | None]:
        """(version, adapter handle or None) for a request that starts now; ``release(version)`` when it ends."""
        self._in_flight[self.version] += 1
        return self.version, (self.current.request if self.current else None)

    def release(self, version: int) -> bool:
        """A request on ``version`` ended; True when that leaves an adapter to ``retire``."""
        self._in_flight[version] -= 1
        if self._in_flight[version] > 0:
            return False
        del self._in_flight[version]
        return version != self.version and version in self._loaded

    def retire(self) -> list[LoadedAdapter]:
        """Forget and return the adapters that are neither current nor used by a request in flight."""
        done = [a for v, a in self._loaded.items() if v != self.version and not self._in_flight[v]]
        for adapter in done:
            del self._loaded[adapter.version]
        return done

    def loaded(self) -> list[LoadedAdapter]:
        return list(self._loaded.values())
