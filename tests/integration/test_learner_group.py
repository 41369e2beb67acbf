"""The Ray learner group: a checkpoint taken mid-run, with the actors killed and restarted from it,
continues exactly as the run that was never interrupted."""

import pytest
import ray

pytestmark = pytest.mark.slow


def batches(model_dir, n=4):
    """Fixed train batches, on-policy for the start model."""
    from transformers import AutoModelForCausalLM

    from tests.fakes import random_lm_batch

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return [random_lm_batch(model, [10 * step, 10 * step + 1]) for step in range(n)]


def train(group, batch_list):
    for batch in batch_list:
        ray.get(group.train_step_async(batch))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from areal.config import LearnerConfig, TrainConfig
    from launch.tiny_model import TinyModelSize, make_random_tiny_model

    model = make_random_tiny_model(tmp_path_factory.mktemp("model"),
                                   TinyModelSize(hidden_size=64, intermediate_size=128, num_hidden_layers=2))
    cfg = TrainConfig(total_steps=4, learner=LearnerConfig(
        workers=2, lr=1e-2, minibatches=2, warmup_steps=3, lr_decay="cosine", aggregator="flag"))
    return cfg, str(model), batches(model)


def test_save_kill_load_continue_matches_an_uninterrupted_run(ray_session, setup, tmp_path):
    from actors.learner_group import LearnerGroup
    from learners.checkpoint import CheckpointStore

    cfg, model, data = setup
    group = LearnerGroup(cfg, model, use_gpu=False)
    train(group, data)
    uninterrupted = group.weights_digests()
    group.shutdown()
    assert len(set(uninterrupted)) == 1, "replicas diverged"

    group = LearnerGroup(cfg, model, use_gpu=False)
    train(group, data[:2])
    path = group.save_checkpoint(str(tmp_path), {"step": 2, "version": 2})
    group.shutdown()  # ray.kill: the processes die with their optimizer state in memory

    found, manifest = CheckpointStore(tmp_path).latest_valid()
    assert str(found) == path and manifest["learner_workers"] == 2
    group = LearnerGroup(cfg, model, use_gpu=False, checkpoint=path)
    train(group, data[2:])
    resumed = group.weights_digests()
    group.shutdown()
    assert resumed == uninterrupted
