"""How the driver schedules the two sides (``controller.*``)."""

from __future__ import annotations

from dataclasses import dataclass

from areal.config._checks import require


@dataclass
class ControllerConfig:
    """Throughput balancing and the deterministic schedule."""

    balance: bool = True
    """Adapt rollouts in flight (and, with rollout.min/max_workers, the worker count) so neither side idles."""
    target_idle: float = 0.1
    """Balancing acts only while a side is idle more than this fraction of a step."""
    min_in_flight: int = 1
    """The in-flight limit never goes below this (nor below one rollout per worker)."""
    scale_cooldown_s: float = 60.0
    """Seconds between two changes of the rollout worker count."""
    max_unaccepted_groups: int = 256
    """Stop the run, naming why, when this many finished rollout groups in a row were not accepted (all
    filtered for equal rewards, stale, or failed): such a run would generate forever. 0 = never stop."""
    deterministic: bool = False
    """Lock-step schedule: rollouts are collected in submission order and weights change only between
    generation rounds, so a seeded run (and a run killed and resumed) ends with bitwise identical weights.
    Slower: generation and training overlap less. Balancing is off in this mode."""

    def __post_init__(self):
        require(0 < self.target_idle < 1, "controller.target_idle", self.target_idle, "a fraction in (0, 1)")
        require(self.min_in_flight >= 1, "controller.min_in_flight", self.min_in_flight, "an int >= 1")
        require(self.max_unaccepted_groups >= 0, "controller.max_unaccepted_groups", self.max_unaccepted_groups,
                "an int >= 0 (0 = never stop)")
        require(self.scale_cooldown_s >= 0, "controller.scale_cooldown_s", self.scale_cooldown_s, "seconds >= 0")
