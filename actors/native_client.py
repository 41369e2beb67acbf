"""vLLM's weight-sync client protocol over one rollout actor (UNVERIFIED, like ``learners.native_sender``).

vLLM's trainer-side engine calls these four methods, blocking, from the learner's weight thread; each is one
call to the rollout actor, which forwards it to its engine with the pause/version protocol around it.
"""

from __future__ import annotations

import ray


class RolloutActorClient:
    """Structural ``VLLMWeightSyncClient`` for the rollout actor ``handle`` receiving ``version``."""

    def __init__(self, handle, version: int, timeout_s: float):
        self.handle, self.version, self.timeout_s = handle, version, timeout_s

    def _call(self, method: str, *args):
        try:
            return ray.get(getattr(self.handle, method).remote(*args), timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError as exc:
            raise TimeoutError(f"native weight transfer: {method}(version {self.version}) unfinished after "
                               f"{self.timeout_s:.0f}s (rollout.weight_sync_timeout_s)") from exc

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self._call("native_init", init_info)

    def start_weight_update(self) -> None:
        self._call("native_start")

    def update_weights(self, update_info) -> None:
        self._call("native_update", update_info)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._call("native_finish", self.version)
