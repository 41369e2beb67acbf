"""Learner settings (``learner.*``): optimiser, DeepSpeed and placement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from areal.config._checks import check_resources, require

AGGREGATORS = ("mean", "flag", "coordinate_median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geometric_median")
ATTACKS = ("random", "reverse", "sign_flip", "little_is_enough", "fall_of_empires", "gaussian", "dropped_coordinates")


@dataclass
class ByzantineConfig:
    """Simulated Byzantine learners (``learner.byzantine.*``), for robustness tests and benchmarks only."""

    ranks: List[int] = field(default_factory=list)
    """Learner ranks whose gradient is replaced by the attack; empty = off."""
    attack: str = "reverse"
    """One of random, reverse, sign_flip, little_is_enough, fall_of_empires, gaussian, dropped_coordinates."""
    omniscient: bool = True
    """Attackers see every rank's honest gradient (the threat model of ALIE and fall-of-empires)."""

    def __post_init__(self):
        require(self.attack in ATTACKS, "learner.byzantine.attack", self.attack, f"one of {', '.join(ATTACKS)}")
        require(len(set(self.ranks)) == len(self.ranks), "learner.byzantine.ranks", self.ranks, "distinct ranks")


LM_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


LORA_SYNC = ("auto", "adapter", "merged")


@dataclass
class LoraConfig:
    """LoRA adapters for the LM learner (``learner.lora.*``): only they train; engines get merged weights or the
    adapters themselves (``sync``)."""

    rank: int = 0
    """Adapter rank r; 0 = full fine-tuning."""
    alpha: float = 0.0
    """Scale numerator: the update is (alpha / rank) * B A; 0 = rank (scale 1)."""
    dropout: float = 0.0
    """Dropout on the adapters' input while training. Above 0 the learner's log-probs (proximal and current)
    become random, so the PPO ratio carries dropout noise; 0 keeps them deterministic."""
    target_modules: List[str] = field(default_factory=lambda: list(LM_LORA_TARGETS))
    """Names (last path component) of the Linear layers to adapt; the default fits Qwen2/Llama-style models."""
    sync: str = "auto"
    """What reaches the engines for each version. "merged": W + (alpha / rank) B A under the base model's names,
    reloaded in place like full fine-tuning. "adapter": only A and B (a few MB), served as a vLLM LoRA request
    per version on the base model, which never changes; requests in flight finish with the adapter they
    started with, so no pause and no KV recompute. "auto": adapter when the engines run on GPUs, merged on
    CPU, where vLLM's LoRA layers made generation 5.8x slower than the merged model (SmolLM2-135M, rank 16 on
    all 7 projections, 128 samples; docs/learners.md)."""

    def __post_init__(self):
        require(self.rank >= 0, "learner.lora.rank", self.rank, "an int >= 0 (0 = full fine-tuning)")
        require(self.sync in LORA_SYNC, "learner.lora.sync", self.sync, f"one of {', '.join(LORA_SYNC)}")
        require(self.alpha >= 0, "learner.lora.alpha", self.alpha, "a float >= 0 (0 = learner.lora.rank)")
        require(0 <= self.dropout < 1, "learner.lora.dropout", self.dropout, "a float in [0, 1)")
        require(len(self.target_modules) > 0, "learner.lora.target_modules", list(self.target_modules),
                "at least one module name, e.g. [q_proj, v_proj]")
        require(all(isinstance(m, str) and m for m in self.target_modules), "learner.lora.target_modules",
                list(self.target_modules), "non-empty module names, e.g. q_proj")

    @property
    def scale(self) -> float:
        """alpha / rank, the factor of B A in the adapted weight."""
        return (self.alpha or self.rank) / self.rank if self.rank else 0.0


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
    max_tokens_per_mb: int = 16384
    """Tokens in one forward (the proximal pass and training alike); a minibatch takes as many forwards as it
    needs and accumulates their gradients into one optimizer step. A longer single sequence gets its own."""
    packing: bool = True
    """Pack whole sequences into rows (positions restart per sequence, attention stays inside each); false =
    one right-padded row per sequence, each forward padded to its longest."""
    pack_row_tokens: int = 0
    """Longest packed row; 0 = the longest sequence of the pass. Attention kernels given a block-diagonal mask
    (SDPA, eager) cost a row's length squared, so longer rows only pay with a varlen kernel (flash-attention)."""
    prefix_row_tokens: int = 1024
    """With packing: rows that share a prefix (a group's samples share their prompt) go through the model as one
    row holding the prefix once (``areal.prefix_sharing``), up to this many positions per row; 0 = off. Needs SDPA
    or eager attention without sliding windows (otherwise off)."""
    logprob_chunk_tokens: int = 1024
    """The LM head and log-softmax run over this many tokens at a time and are recomputed in backward, so
    [tokens, vocab] logits never exist beyond one chunk. 0 = all logits at once (with packing=false: the
    full-logits path over padded rows, kept as the reference)."""
    skip_zero_advantage: bool = True
    """Skip the forward and backward of sequences whose advantage is 0 at every token (a group whose samples all
    scored alike, kept with algo.filter_zero_variance=false): with no entropy bonus and no KL in the loss their
    gradient is exactly 0, and their tokens still count in the loss's denominators, so the update is unchanged.
    learner/skipped_fraction says how many were skipped; learner/entropy and the PPO statistics are then means
    over the sequences that ran."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in backward instead of keeping them (transformers' / diffusers'
    gradient checkpointing): about a third more compute for a fraction of the activation memory."""
    offload_optimizer: bool = False
    """Keep optimizer state (and fp32 master weights) in CPU memory and step there (ZeRO-Offload; stage >= 1)."""
    ref_offload: bool = False
    """With algo.kl_coef > 0 and full fine-tuning: keep the frozen reference model on the CPU (its forward runs
    there) instead of beside the policy; needed with learner.zero_stage=3, whose policy is sharded."""
    offload_params: bool = False
    """Keep parameters in CPU memory between uses (ZeRO-Infinity; stage 3)."""
    num_cpus: float = 1.0
    """Ray CPUs per learner actor."""
    num_gpus: float = 0.0
    """Ray GPUs per learner actor (1 on GPU machines)."""
    resources: Dict[str, float] = field(default_factory=dict)
    """Custom Ray resources per learner actor, e.g. {learner_pool: 1}: the learner group (and a group rebuilt
    after a failure) is placed only on nodes that advertise them (``ray start --resources``); empty = any node."""
    warmup_steps: int = 0
    """Optimizer steps of linear learning-rate warm-up from 0."""
    lr_decay: str = "constant"
    """After warm-up: constant, or cosine to 0 over the run's optimizer steps."""
    aggregator: str = "mean"
    """How ranks combine gradients: mean (DeepSpeed all-reduce) or a robust rule: flag, coordinate_median,
    trimmed_mean, krum, multi_krum, bulyan, geometric_median (ZeRO stage 0 only; docs/learners.md)."""
    aggregator_f: int = 0
    """f, the number of Byzantine learners the robust rule must tolerate."""
    flag_m: int = 0
    """Flag: subspace dimension (0 = max(1, (workers - f) // 2))."""
    flag_lam: float = 0.0
    """Flag: weight of the pairwise (augmented) term."""
    flag_iters: int = 1
    """Flag: IRLS iterations."""
    flag_rescale: str = "median_norm"
    """Flag: median_norm scales the output to the median gradient norm; none keeps the raw estimate."""
    aggregation_bucket_mb: float = 64.0
    """Robust rules exchange gradients in buckets of this size (each rank holds workers x bucket)."""
    byzantine: ByzantineConfig = field(default_factory=ByzantineConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    step_timeout_s: float = 900.0
    """A train step that takes longer fails with an error naming the learner."""
    max_restarts: int = 2
    """A learner that dies or hangs restores the group from the last checkpoint this many times, then the run fails."""
    start_timeout_s: float = 900.0
    """Learner start-up (first start JIT-builds DeepSpeed's communication op on CPU)."""

    def __post_init__(self):
        require(self.workers >= 1, "learner.workers", self.workers, "an int >= 1")
        require(self.lr > 0, "learner.lr", self.lr, "a positive float")
        require(self.weight_decay >= 0, "learner.weight_decay", self.weight_decay, "a float >= 0")
        require(self.grad_clip >= 0, "learner.grad_clip", self.grad_clip, "a float >= 0 (0 = off)")
        require(self.minibatches >= 1, "learner.minibatches", self.minibatches, "an int >= 1")
        require(self.zero_stage in (0, 1, 2, 3), "learner.zero_stage", self.zero_stage, "0, 1, 2 or 3")
        require(self.max_tokens_per_mb >= 1, "learner.max_tokens_per_mb", self.max_tokens_per_mb, "an int >= 1")
        require(self.pack_row_tokens >= 0, "learner.pack_row_tokens", self.pack_row_tokens,
                "an int >= 0 (0 = the longest sequence)")
        require(self.prefix_row_tokens >= 0, "learner.prefix_row_tokens", self.prefix_row_tokens,
                "an int >= 0 (0 = no prefix sharing)")
        require(self.logprob_chunk_tokens >= 0, "learner.logprob_chunk_tokens", self.logprob_chunk_tokens,
                "an int >= 0 (0 = no chunking)")
        require(not self.offload_optimizer or self.zero_stage >= 1, "learner.offload_optimizer",
                self.offload_optimizer, "false with learner.zero_stage=0 (optimizer offload needs ZeRO stage 1-3)")
        require(not self.offload_params or self.zero_stage == 3, "learner.offload_params", self.offload_params,
                "false unless learner.zero_stage=3 (parameter offload needs ZeRO-3)")
        require(self.warmup_steps >= 0, "learner.warmup_steps", self.warmup_steps, "an int >= 0")
        require(self.lr_decay in ("constant", "cosine"), "learner.lr_decay", self.lr_decay, "constant or cosine")
        require(self.aggregator in AGGREGATORS, "learner.aggregator", self.aggregator,
                f"one of {', '.join(AGGREGATORS)}")
        require(self.aggregator_f >= 0, "learner.aggregator_f", self.aggregator_f, "an int >= 0")
        require(self.flag_m >= 0, "learner.flag_m", self.flag_m, "an int >= 0 (0 = default)")
        require(self.flag_lam >= 0, "learner.flag_lam", self.flag_lam, "a float >= 0")
        require(self.flag_iters >= 1, "learner.flag_iters", self.flag_iters, "an int >= 1")
        require(self.flag_rescale in ("median_norm", "none"), "learner.flag_rescale", self.flag_rescale,
                "median_norm or none")
        require(self.aggregation_bucket_mb > 0, "learner.aggregation_bucket_mb", self.aggregation_bucket_mb,
                "a positive number of MiB")
        require(all(0 <= r < self.workers for r in self.byzantine.ranks), "learner.byzantine.ranks",
                self.byzantine.ranks, f"ranks in [0, learner.workers={self.workers})")
        require(not self.gathers_gradients or self.zero_stage == 0, "learner.zero_stage", self.zero_stage,
                f"0 with learner.aggregator={self.aggregator} or learner.byzantine.ranks set: robust rules need "
                "each rank's whole gradient, which ZeRO stages 1-3 reduce inside DeepSpeed's backward "
                "(use learner.aggregator=mean for ZeRO)")
        if self.aggregator != "mean" or self.byzantine.ranks:
            from areal.aggregation.bucketed import check_rule  # torch-only; keeps config import light otherwise

            check_rule(self.aggregator, self.workers, self.aggregator_f)
        check_resources(self.resources, "learner.resources")
        require(self.max_restarts >= 0, "learner.max_restarts", self.max_restarts, "an int >= 0")
        for key in ("step_timeout_s", "start_timeout_s"):
            require(getattr(self, key) > 0, f"learner.{key}", getattr(self, key), "a positive number of seconds")

    @property
    def gathers_gradients(self) -> bool:
        """True when ranks exchange whole gradients instead of DeepSpeed's all-reduce."""
        return self.aggregator != "mean" or bool(self.byzantine.ranks)

    def aggregator_params(self) -> dict:
        """The rule's keyword parameters (Flag's; the others take only f)."""
        if self.aggregator != "flag":
            return {}
        return {"m": self.flag_m or None, "lam": self.flag_lam, "iters": self.flag_iters,
                "rescale": None if self.flag_rescale == "none" else self.flag_rescale}
