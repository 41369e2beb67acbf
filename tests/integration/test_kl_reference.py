"""The KL to the reference policy (algo.kl_coef): the reference is the starting model, scored like the policy.

With LoRA it is the learner's own base with the adapters off (no copy): the KL starts at exactly 0 (the
adapters start as a zero update) and grows as they train. With full fine-tuning it is a frozen copy that stays
bitwise the starting weights through training, and through a resume from a checkpoint's weights.
"""

import pytest
import torch

from areal.config import AlgoConfig, LearnerConfig, LoraConfig

pytestmark = pytest.mark.slow
KL = AlgoConfig(kl_coef=0.5, kl_estimator="k3")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from launch.tiny_model import make_random_tiny_model

    return str(make_random_tiny_model(tmp_path_factory.mktemp("model")))


def make(model_dir, port, lora=0, start_model="", algo=KL, lr=3e-2):
    from learners.deepspeed_setup import Rendezvous
    from learners.lm_learner import LMLearner

    cfg = LearnerConfig(lr=lr, minibatches=1, lora=LoraConfig(rank=lora, alpha=lora))
    return LMLearner(model_dir, cfg, algo, rdv=Rendezvous(master_port=port), start_model=start_model)


def batch_for(learner, seed):
    from tests.fakes import random_lm_batch

    return random_lm_batch(learner.engine.module, seeds=[seed], completion_len=5)


def digest_of(path):
    from transformers import AutoModelForCausalLM

    from learners.deepspeed_learner import state_digest

    return state_digest(AutoModelForCausalLM.from_pretrained(path).state_dict())


def test_with_lora_the_reference_is_the_base_and_the_kl_starts_at_zero_then_grows(model_dir):
    from transformers import AutoModelForCausalLM

    from learners.lm_learner import token_logprobs

    learner = make(model_dir, 29681, lora=4)
    assert type(learner.kl_reference).__name__ == "AdapterFreeReference"
    batch = batch_for(learner, 1)
    first = learner.train_step(batch)
    assert first["learner/kl_ref"] == 0.0
    kls = [learner.train_step(batch_for(learner, seed))["learner/kl_ref"] for seed in range(2, 6)]
    assert kls[-1] > 0.0
    # the reference pass is the base model's own log-probs, whatever the adapters learned
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    ref = learner.reference_logprobs(batch)
    expected = token_logprobs(base, batch.input_ids, batch.attention_mask, 1.0)
    mask = batch.loss_mask
    torch.testing.assert_close(ref[mask], expected[mask], rtol=1e-4, atol=1e-5)
    # and the adapters are on again for the policy
    assert not torch.allclose(learner.batch_logprobs(batch)[mask], ref[mask])


def test_with_full_fine_tuning_the_frozen_reference_survives_training_and_a_resume(model_dir, tmp_path):
    learner = make(model_dir, 29681)
    start = digest_of(model_dir)
    assert learner.kl_reference.state_digest() == start
    for seed in range(3):
        stats = learner.train_step(batch_for(learner, seed))
    assert stats["learner/kl_ref"] > 0.0
    assert learner.kl_reference.state_digest() == start  # bitwise the starting weights
    saved = learner.save_model_atomic(tmp_path / "step-3-model")
    resumed = make(str(saved), 29681, start_model=model_dir)
    assert resumed.kl_reference.state_digest() == start  # not the checkpoint's weights
    assert resumed.train_step(batch_for(resumed, 9))["learner/kl_ref"] > 0.0


def test_the_kl_as_a_token_reward_trains_and_is_logged(model_dir):
    learner = make(model_dir, 29681, algo=AlgoConfig(kl_coef=0.5, kl_in="reward"))
    batch = batch_for(learner, 1)
    for seed in range(2):
        learner.train_step(batch_for(learner, seed))  # move the policy away from the reference
    stats = learner.train_step(batch)
    assert stats["learner/kl_ref"] > 0.0
