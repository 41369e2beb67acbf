"""Build one learner rank for the configured policy: PPO family for text, DDPO for diffusion."""

from __future__ import annotations

from dataclasses import replace

from areal.config import TrainConfig
from learners.deepspeed_learner import DeepSpeedLearner
from learners.deepspeed_setup import Rendezvous


def make_learner(cfg: TrainConfig, model_path: str, rdv: Rendezvous, start_model: str = "") -> DeepSpeedLearner:
    """One rank, its weights from ``model_path`` (a checkpoint's model/ when resuming); ``start_model``: the run's
    starting model, the reference policy of algo.kl_coef (default: model_path)."""
    total_updates = cfg.total_steps * cfg.learner.minibatches
    if cfg.is_diffusion:
        from learners.ddpo_learner import DDPOLearner

        return DDPOLearner(model_path, cfg.learner, cfg.algo, cfg.diffusion, rdv, cfg.seed, total_updates)
    from learners.lm_learner import LMLearner

    adapter_sync = cfg.lora_sync(engine_on_gpu=cfg.rollout.num_gpus > 0) == "adapter"
    # Dr.GRPO's constant T defaults to the token budget
    algo = replace(cfg.algo, loss_norm_tokens=cfg.algo.loss_norm_tokens or cfg.rollout.max_new_tokens)
    return LMLearner(model_path, cfg.learner, algo, cfg.rollout.temperature, rdv, cfg.seed, total_updates,
                     adapter_sync, start_model)
