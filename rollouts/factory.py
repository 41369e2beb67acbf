"""Build one rollout worker for the configured policy: a text engine or a diffusion sampler."""

from __future__ import annotations

from pathlib import Path

from areal.config import TrainConfig
from rollouts.reward_pool import RewardPool
from rollouts.worker import RolloutWorker


def make_reward_pool(cfg: TrainConfig, model_path: str) -> RewardPool:
    """The processes that score the task's outputs with its rewards (``task.reward_workers``,
    ``task.reward_timeout_s``, ``task.reward_memory_mb``); the workflow that gets it closes it."""
    from rollouts.tasks.factory import make_reward_suites

    t = cfg.task
    return RewardPool(make_reward_suites(cfg, model_path), t.reward_workers, t.reward_timeout_s, t.reward_memory_mb)


def make_rollout_worker(cfg: TrainConfig, model_path: str, rank: int, weights_root: str | Path,
                        device: str = "cpu", native_backend: str = "", env_pool=None) -> RolloutWorker:
    """The backend, workflow and task of rollout worker ``rank`` (heavy imports happen only for the one chosen);
    ``native_backend``: the text engine receives weights through vLLM's native transfer; ``env_pool``: where a
    multi-turn workflow's environments run (default: threads of this process, ``env.workers=0``)."""
    if cfg.is_diffusion:
        from rollouts.diffusion_workflow import DiffusionWorkflow
        from rollouts.engines.diffusion_sampler import DiffusionSampler

        sampler = DiffusionSampler(model_path, cfg.diffusion, device=device)
        workflow = DiffusionWorkflow(cfg.rollout.samples_per_prompt, make_reward_pool(cfg, model_path))
        return RolloutWorker(sampler, workflow, weights_root)

    from transformers import AutoTokenizer

    from areal.models.lora import adapter_base
    from rollouts.engines import make_engine
    from rollouts.engines.base import SamplingConfig
    from rollouts.prompt_format import PromptFormat
    from rollouts.workflow import SingleTurnWorkflow

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    sampling = SamplingConfig(max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                              top_p=cfg.rollout.top_p)
    tail = cfg.rollout.length_tail_median
    adapters = cfg.lora_sync(engine_on_gpu=device == "cuda") == "adapter"
    if adapters:
        # the engine serves adapters on the base model; a saved LoRA model (merged, adapter/ beside it) is not one
        model_path = str(adapter_base(model_path) or model_path)
    # one adapter per version a request in flight may still use: up to the staleness bound, plus the newest
    engine = make_engine(cfg.engine, model_path, seed_offset=rank, native_backend=native_backend,
                         lora_rank=cfg.learner.lora.rank if adapters else 0, max_loras=cfg.algo.max_staleness + 2)
    prompt_format = PromptFormat(cfg.task.chat_template, cfg.task.system_prompt)
    if cfg.env.multi_turn:
        from rollouts.multi_turn import MultiTurnWorkflow

        if env_pool is None:
            from rollouts.envs.factory import environment_maker
            from rollouts.envs.pool import LocalEnvironmentPool

            env_pool = LocalEnvironmentPool(environment_maker(cfg, model_path), cfg.env.step_timeout_s,
                                            cfg.env.concurrency)
        workflow = MultiTurnWorkflow(tokenizer, sampling, cfg.rollout.samples_per_prompt, env_pool,
                                     cfg.env.max_turns, cfg.env.max_episode_tokens, prompt_format,
                                     cfg.engine.max_model_len)
        return RolloutWorker(engine, workflow, weights_root)
    workflow = SingleTurnWorkflow(tokenizer, sampling, cfg.rollout.samples_per_prompt,
                                  make_reward_pool(cfg, model_path),
                                  length_tail=(tail, cfg.rollout.length_tail_sigma) if tail else None,
                                  prompt_format=prompt_format, total_steps=cfg.total_steps,
                                  max_model_len=cfg.engine.max_model_len)
    return RolloutWorker(engine, workflow, weights_root)
