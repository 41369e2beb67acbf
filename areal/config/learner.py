"""Learner settings (``learner.*``): optimiser, DeepSpeed and placement."""

from __future__ import annotations

from dataclasses import dataclass

from areal.config._checks import require


@dataclass
class LearnerConfig:
    """The LM learner: a DeepSpeed engine per data-parallel rank."""

    workers: int = 1
    """Data-parallel learner actors."""
    lr: float = 3e-4
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 = off)."""
    minibatches: int = 2
    """Optimizer steps per train batch; the proximal policy is the weights before the first."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-3."""
    num_cpus: float = 1.0
    """Ray CPUs per learner actor."""
    num_gpus: float = 0.0
    """Ray GPUs per learner actor (1 on GPU machines)."""
    step_timeout_s: float = 900.0
    """A train step that takes longer fails with an error naming the learner."""
    start_timeout_s: float = 900.0
    """Learner start-up (first start JIT-builds DeepSpeed's communication op on CPU)."""

    def __post_init__(self):
        require(self.workers >= 1, "learner.workers", self.workers, "an int >= 1")
        require(self.lr > 0, "learner.lr", self.lr, "a positive float")
        require(self.weight_decay >= 0, "learner.weight_decay", self.weight_decay, "a float >= 0")
        require(self.grad_clip >= 0, "learner.grad_clip", self.grad_clip, "a float >= 0 (0 = off)")
        require(self.minibatches >= 1, "learner.minibatches", self.minibatches, "an int >= 1")
        require(self.zero_stage in (0, 1, 2, 3), "learner.zero_stage", self.zero_stage, "0, 1, 2 or 3")
        for key in ("step_timeout_s", "start_timeout_s"):
            require(getattr(self, key) > 0, f"learner.{key}", getattr(self, key), "a positive number of seconds")
