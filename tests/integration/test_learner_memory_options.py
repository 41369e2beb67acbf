"""Memory options are settings, not different training: ZeRO-3, CPU offload and gradient checkpointing
take the same optimizer steps as the plain ZeRO-0 learner (fp32, one rank; a broken gradient path
moves weights by ~1e-3 per Adam step, float reordering by ~1e-6)."""

import pytest
import torch

from areal.config import AlgoConfig, LearnerConfig
from tests.fakes import random_lm_batch

pytestmark = pytest.mark.slow
PORTS = iter(range(29800, 29900))
OPTIONS = {
    "zero3": {"zero_stage": 3},
    "zero2_offload_optimizer": {"zero_stage": 2, "offload_optimizer": True},
    "zero3_offload_everything": {"zero_stage": 3, "offload_optimizer": True, "offload_params": True},
    "gradient_checkpointing": {"gradient_checkpointing": True},
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from launch.tiny_model import TinyModelSize, make_random_tiny_model

    return make_random_tiny_model(tmp_path_factory.mktemp("model"),
                                  TinyModelSize(hidden_size=64, intermediate_size=128, num_hidden_layers=2))


def trained_state(model_dir, steps=2, **options):
    """Weights after ``steps`` updates on fixed batches, with chunked log-probs and shared-prefix rows cut short
    (16 positions), so every minibatch accumulates several micro-batches."""
    from learners.deepspeed_setup import Rendezvous
    from learners.lm_learner import LMLearner

    cfg = LearnerConfig(lr=1e-3, minibatches=2, max_tokens_per_mb=16, prefix_row_tokens=16, logprob_chunk_tokens=8,
                        **options)
    learner = LMLearner(str(model_dir), cfg, AlgoConfig(), rdv=Rendezvous(master_port=next(PORTS)))
    for step in range(steps):
        batch = random_lm_batch(learner.engine, [10 * step, 10 * step + 1], prompt_len=6, completion_len=8,
                                varied=True)
        stats = learner.train_step(batch)
        assert stats["learner/micro_batches"] > 2
    return learner.gathered_state()


@pytest.fixture(scope="module")
def reference(model_dir):
    return trained_state(model_dir)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_memory_options_take_the_same_steps_as_plain_zero0(model_dir, reference, name):
    state = trained_state(model_dir, **OPTIONS[name])
    start = trained_state(model_dir, steps=0)
    for key, value in reference.items():
        assert not torch.equal(value, start[key]) or "norm" in key, f"{key} did not train"
        torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")


def test_offload_needs_the_zero_stage_that_provides_it():
    with pytest.raises(ValueError, match="learner.offload_optimizer"):
        LearnerConfig(offload_optimizer=True)
    with pytest.raises(ValueError, match="learner.offload_params"):
        LearnerConfig(zero_stage=2, offload_params=True)
