"""Rollout worker settings (``rollout.*``): how many, how they sample, how long they may take."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

from areal.config._checks import check_resources, require
from areal.weight_sync import TRANSPORTS


@dataclass
class RolloutConfig:
    """Rollout workers and their sampling."""

    workers: int = 1
    """Rollout actors, each with its own inference engine."""
    samples_per_prompt: int = 8
    """n: completions per prompt (one group)."""
    max_concurrent: int = 16
    """Groups in flight across all workers at most (also bounded by the staleness rule)."""
    max_new_tokens: int = 16
    """Completion length cap."""
    temperature: float = 1.0
    """Sampling temperature (the learner scales logits by the same value)."""
    top_p: float = 1.0
    """Nucleus sampling; 1.0 samples from the full distribution the learner trains."""
    length_tail_median: int = 0
    """Benchmark workload: if > 0, each group generates exactly L tokens, L ~ lognormal with this median, on past EOS
    (the completion's text, which rewards score, ends at the first EOS)."""
    length_tail_sigma: float = 1.0
    """Spread (sigma of log L) of that lognormal; L is capped at max_new_tokens."""
    min_workers: int = 0
    """Balancing budget: fewest rollout actors (0 = rollout.workers)."""
    max_workers: int = 0
    """Balancing budget: most rollout actors (0 = rollout.workers); Ray must have room for them."""
    max_restarts: int = 8
    """Rollout actors that die or hang are replaced (their prompts requeued) this many times, then the run fails."""
    num_cpus: float = 1.0
    """Ray CPUs reserved per rollout actor."""
    num_gpus: float = 0.0
    """Ray GPUs per rollout actor (0 on CPU machines)."""
    resources: Dict[str, float] = field(default_factory=dict)
    """Custom Ray resources per rollout actor, e.g. {rollout_pool: 1}: rollout actors (and their replacements)
    run only on nodes that advertise them (``ray start --resources``); empty = any node."""
    generate_timeout_s: float = 600.0
    """A group that takes longer fails with an error naming the worker."""
    sync_every: int = 1
    """Ship the learners' weights to the engines every this many versions (1 = every version). Each update
    pauses generation for a reload; fewer of them buy generation time at the price of staler samples (the
    staleness gate still bounds every trained sample by algo.max_staleness, counted from the version the
    engine ran). Capped at algo.max_staleness (engines further behind could start no fresh group), so
    synchronous runs (max_staleness 0) and controller.deterministic=true sync every version. Evaluations and
    the last step always see the newest weights."""
    weight_sync_timeout_s: float = 300.0
    """A weight update that takes longer fails with an error naming the worker and version."""
    start_timeout_s: float = 900.0
    """Engine start-up (first start JIT-compiles kernels on CPU)."""
    staging_dir: str = ""
    """Where each rollout actor stages the weight files it receives before its engine loads them (files: up to
    two versions at once; buckets from a learner on another node: two buckets), deleted when the actor stops,
    and where learners write their exported buckets (one version); "" = /dev/shm (RAM) when present, else the
    temp dir."""
    weight_transport: str = "auto"
    """How a new policy version reaches the engines (docs/weight_sync.md). "buckets": the learner writes the
    weights as safetensors buckets into RAM (/dev/shm) on its node, once; an engine on that node streams them
    into its in-place reload straight from there (no copy in between), one on another node through its staging
    directory, one bucket at a time. "files": the whole model serialised into one Ray object, written out by
    every rollout actor, then reloaded from that folder (the earlier path; the diffusion sampler's only one).
    "native": vLLM's own weight transfer between GPUs (NCCL; CUDA IPC on a shared GPU; unverified, see the doc).
    "auto": native where both sides are on GPUs and the installed vLLM has it, else buckets for text engines
    and files for the diffusion sampler."""
    weight_bucket_mb: int = 256
    """Bucket size for weight_transport=buckets, in MiB: the most weight bytes a learner gathers (ZeRO-3) or
    writes, or an engine on another node stages, at once. Tensors are never split: a larger one travels alone."""

    def __post_init__(self):
        require(self.workers >= 1, "rollout.workers", self.workers, "an int >= 1")
        require(self.sync_every >= 1, "rollout.sync_every", self.sync_every, "an int >= 1 (1 = every version)")
        require(self.min_workers <= self.workers, "rollout.min_workers", self.min_workers,
                f"0 (= rollout.workers) or at most rollout.workers ({self.workers})")
        require(self.max_workers == 0 or self.max_workers >= self.workers, "rollout.max_workers", self.max_workers,
                f"0 (= rollout.workers) or at least rollout.workers ({self.workers})")
        require(self.max_restarts >= 0, "rollout.max_restarts", self.max_restarts, "an int >= 0")
        require(self.samples_per_prompt >= 2, "rollout.samples_per_prompt", self.samples_per_prompt,
                "an int >= 2 (group advantages compare samples)")
        require(self.max_concurrent >= 1, "rollout.max_concurrent", self.max_concurrent, "an int >= 1")
        require(self.max_new_tokens >= 1, "rollout.max_new_tokens", self.max_new_tokens, "an int >= 1")
        require(self.temperature > 0, "rollout.temperature", self.temperature, "a positive float")
        require(0 < self.top_p <= 1, "rollout.top_p", self.top_p, "a float in (0, 1]")
        require(0 <= self.length_tail_median <= self.max_new_tokens, "rollout.length_tail_median",
                self.length_tail_median, f"0 (off) or at most rollout.max_new_tokens ({self.max_new_tokens})")
        require(self.length_tail_sigma > 0, "rollout.length_tail_sigma", self.length_tail_sigma, "a positive float")
        check_resources(self.resources, "rollout.resources")
        require(self.weight_transport in TRANSPORTS, "rollout.weight_transport", self.weight_transport,
                f"one of {', '.join(TRANSPORTS)}")
        require(self.weight_bucket_mb >= 1, "rollout.weight_bucket_mb", self.weight_bucket_mb,
                "an int >= 1 (MiB per weight bucket)")
        for key in ("generate_timeout_s", "weight_sync_timeout_s", "start_timeout_s"):
            require(getattr(self, key) > 0, f"rollout.{key}", getattr(self, key), "a positive number of seconds")

    @property
    def worker_budget(self) -> tuple[int, int]:
        """(min, max) rollout actors the balancer may scale between."""
        return self.min_workers or self.workers, self.max_workers or self.workers
