"""What a run writes where (``logging.*``): metric sinks and how much reaches the terminal."""

from __future__ import annotations

from dataclasses import dataclass

from areal.config._checks import require


@dataclass
class LoggingConfig:
    """Where metrics go, and how chatty the console is (``logging.*``)."""

    wandb_mode: str = "offline"
    """wandb: offline (default, no network), online (needs WANDB_API_KEY) or disabled."""
    wandb_project: str = "areal"
    """wandb project name."""
    tensorboard: bool = True
    """Write TensorBoard event files under the run directory."""
    progress: bool = True
    """Live progress bar with ETA in the terminal."""
    verbose: bool = False
    """Console: false shows the progress line and milestones (start, evals, checkpoints, failures, the end) and
    keeps the rest in RUN_DIR/logs/driver.log and Ray's worker logs; true prints every INFO line of the driver and
    every worker's output (Ray's log_to_driver) on the console."""

    def __post_init__(self):
        require(self.wandb_mode in ("offline", "online", "disabled"), "logging.wandb_mode", self.wandb_mode,
                "offline, online or disabled")
