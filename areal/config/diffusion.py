"""Diffusion policy settings (``diffusion.*``): the DDIM sampler and the DDPO update (ALGORITHMS.md §4).

Staleness, the clip range and behaviour weights come from ``algo.*`` as for text
policies (DDPO's clip range is small: set algo.eps_clip to about 1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass

from areal.config._checks import require


@dataclass
class DiffusionConfig:
    """How chains are sampled and how the DDPO learner trains on them."""

    num_steps: int = 20
    """DDIM denoising steps per image (the length of each trajectory)."""
    eta: float = 1.0
    """DDIM stochasticity; > 0 so every step has a Gaussian log-probability (1.0 = DDPM-like)."""
    guidance_scale: float = 1.0
    """Classifier-free guidance weight; > 1 needs a pipeline with an unconditional input (a null class or
    a text encoder). 1.0 = no guidance (one denoiser call per step)."""
    max_batch: int = 64
    """Chains one sampler steps together (its continuous-batching width)."""
    timestep_fraction: float = 1.0
    """Fraction of each chain's steps trained per update (sampled per chain; DDPO's timestep subsampling)."""
    images_per_forward: int = 0
    """The DDPO learner's micro-batch: chains per denoiser forward (each for one timestep); 0 = a whole
    minibatch. Gradients accumulate across forwards, so the update does not change, only its peak memory."""
    adv_clip_max: float = 5.0
    """Advantages are clipped to [-adv_clip_max, adv_clip_max]."""
    per_prompt_stats: bool = True
    """Normalise rewards per prompt over its recent history (else within each group)."""
    stat_buffer_size: int = 32
    """Per-prompt statistics: rewards remembered per prompt."""
    stat_min_count: int = 16
    """Per-prompt statistics: below this many, the whole batch's mean and std are used."""
    lora_rank: int = 0
    """> 0: train LoRA adapters of this rank (peft) on the denoiser's attention layers instead of all weights;
    only the adapters are shipped to the samplers and checkpointed beside the frozen base."""
    lora_alpha: float = 0.0
    """LoRA scale numerator (0 = lora_rank, i.e. scale 1)."""

    def __post_init__(self):
        require(self.num_steps >= 1, "diffusion.num_steps", self.num_steps, "an int >= 1")
        require(self.eta > 0, "diffusion.eta", self.eta,
                "> 0 (eta = 0 is deterministic DDIM and has no log-probability; use 1.0)")
        require(self.guidance_scale >= 1.0, "diffusion.guidance_scale", self.guidance_scale, "a float >= 1 (1 = off)")
        require(self.max_batch >= 1, "diffusion.max_batch", self.max_batch, "an int >= 1")
        require(0 < self.timestep_fraction <= 1, "diffusion.timestep_fraction", self.timestep_fraction,
                "a fraction in (0, 1]")
        require(self.images_per_forward >= 0, "diffusion.images_per_forward", self.images_per_forward,
                "an int >= 0 (0 = a whole minibatch)")
        require(self.adv_clip_max > 0, "diffusion.adv_clip_max", self.adv_clip_max, "a positive float")
        require(1 <= self.stat_min_count <= self.stat_buffer_size, "diffusion.stat_min_count", self.stat_min_count,
                f"an int in [1, diffusion.stat_buffer_size = {self.stat_buffer_size}]")
        require(self.lora_rank >= 0, "diffusion.lora_rank", self.lora_rank, "an int >= 0 (0 = full fine-tuning)")
        require(self.lora_alpha >= 0, "diffusion.lora_alpha", self.lora_alpha, "a float >= 0 (0 = lora_rank)")

    @property
    def trained_steps(self) -> int:
        """Denoising steps of each chain one update trains on (gradients accumulate over them)."""
        return max(1, round(self.timestep_fraction * self.num_steps))
