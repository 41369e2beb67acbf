"""A minibatch's gradient does not depend on how it is split into micro-batches, in every aggregation mode
(ALGORITHMS.md §6: the counts are the whole minibatch's), with the entropy bonus on; and the learner logs the
policy's entropy."""

import dataclasses

import pytest
import torch

from areal.config import AlgoConfig, LearnerConfig

pytestmark = pytest.mark.slow
MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


@pytest.fixture(scope="module")
def learner(tmp_path_factory):
    from launch.tiny_model import make_random_tiny_model
    from learners.deepspeed_setup import Rendezvous
    from learners.lm_learner import LMLearner

    path = make_random_tiny_model(tmp_path_factory.mktemp("model"))
    return LMLearner(str(path), LearnerConfig(lr=1e-3, minibatches=1, packing=False), AlgoConfig(),
                     rdv=Rendezvous(master_port=29663))


def gradient(learner, batch, mode: str, max_tokens: int) -> tuple[torch.Tensor, int]:
    """The accumulated gradient of one minibatch (all rows) in micro-batches of at most ``max_tokens``, and how
    many micro-batches that took."""
    learner.algo = AlgoConfig(loss_agg=mode, loss_norm_tokens=8, entropy_coef=0.01)
    learner.cfg = dataclasses.replace(learner.cfg, max_tokens_per_mb=max_tokens)
    for p in learner.engine.module.parameters():
        p.grad = None
    mask = batch.loss_mask.to(learner.device)
    proximal = learner.batch_logprobs(batch)
    inputs = (proximal, batch.behavior_logprobs.to(learner.device), batch.advantages.to(learner.device), mask, None)
    forwards = {"tokens": 0, "positions": 0, "count": 0}
    learner.train_minibatch(batch, torch.arange(len(batch)), inputs, {}, forwards)
    grads = [p.grad.detach().flatten().clone() for p in learner.engine.module.parameters() if p.grad is not None]
    return torch.cat(grads), forwards["count"]


@pytest.mark.parametrize("mode", MODES)
def test_splitting_a_minibatch_never_changes_its_gradient(learner, mode):
    from tests.fakes import random_lm_batch

    batch = random_lm_batch(learner.engine.module, seeds=[1, 2], prompt_len=4, completion_len=6, varied=True)
    whole, one = gradient(learner, batch, mode, 10_000)
    assert one == 1 and whole.abs().sum() > 0
    for max_tokens, at_least in ((10, 4),):
        split, count = gradient(learner, batch, mode, max_tokens)
        assert count >= at_least
        torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-6)


def test_the_modes_differ_where_the_sequences_lengths_do(learner):
    from tests.fakes import random_lm_batch

    batch = random_lm_batch(learner.engine.module, seeds=[3], prompt_len=4, completion_len=6, varied=True)
    grads = [gradient(learner, batch, mode, 10_000)[0] for mode in MODES]
    for i in range(len(MODES)):
        for j in range(i + 1, len(MODES)):
            assert not torch.allclose(grads[i], grads[j]), (MODES[i], MODES[j])


def test_a_step_logs_the_policys_entropy(learner):
    import math

    from tests.fakes import random_lm_batch

    learner.algo = AlgoConfig()
    batch = random_lm_batch(learner.engine.module, seeds=[4])
    stats = learner.train_step(batch)
    vocab = learner.engine.module.config.vocab_size
    # a random model's next-token distribution is nearly uniform: entropy close to log(vocab), never above it
    assert 0.5 * math.log(vocab) < stats["learner/entropy"] <= math.log(vocab) + 1e-4


def _zero_some_advantages(batch, rows):
    advantages = batch.advantages.clone()
    advantages[rows] = 0.0
    return dataclasses.replace(batch, advantages=advantages)


def _gradient_of_rows(learner, batch, run) -> tuple[torch.Tensor, dict]:
    for p in learner.engine.module.parameters():
        p.grad = None
    mask = batch.loss_mask.to(learner.device)
    inputs = (learner.batch_logprobs(batch), batch.behavior_logprobs.to(learner.device),
              batch.advantages.to(learner.device), mask, None)
    forwards = {"tokens": 0, "positions": 0, "count": 0}
    learner.train_minibatch(batch, torch.arange(len(batch)), inputs, {}, forwards, run=run)
    grads = [p.grad.detach().flatten().clone() for p in learner.engine.module.parameters() if p.grad is not None]
    return torch.cat(grads), forwards


@pytest.mark.parametrize("mode", MODES)
def test_sequences_with_zero_advantage_are_skipped_and_the_gradient_is_the_same(learner, mode):
    from tests.fakes import random_lm_batch

    learner.algo = AlgoConfig(loss_agg=mode, loss_norm_tokens=8)
    learner.cfg = dataclasses.replace(learner.cfg, max_tokens_per_mb=10_000, skip_zero_advantage=True)
    batch = random_lm_batch(learner.engine.module, seeds=[5, 6], prompt_len=4, completion_len=6, varied=True)
    batch = _zero_some_advantages(batch, [0, 2, 3])
    everything = torch.arange(len(batch))
    run = learner.rows_to_run(everything, batch.advantages, batch.loss_mask)
    assert run.tolist() == [r for r in range(len(batch)) if r not in (0, 2, 3)]
    whole, all_ran = _gradient_of_rows(learner, batch, None)
    skipped, some_ran = _gradient_of_rows(learner, batch, run)
    assert some_ran["tokens"] < all_ran["tokens"]
    # the skipped sequences still count in the denominators: the gradient is the whole minibatch's
    torch.testing.assert_close(skipped, whole, rtol=1e-5, atol=1e-7)


def test_nothing_is_skipped_when_another_term_has_a_gradient_there(learner):
    from tests.fakes import random_lm_batch

    batch = _zero_some_advantages(random_lm_batch(learner.engine.module, seeds=[7]), [0, 1])
    everything = torch.arange(len(batch))
    learner.cfg = dataclasses.replace(learner.cfg, skip_zero_advantage=True)
    learner.algo = AlgoConfig(entropy_coef=0.01)
    assert len(learner.rows_to_run(everything, batch.advantages, batch.loss_mask)) == len(batch)
    learner.algo = AlgoConfig()
    learner.cfg = dataclasses.replace(learner.cfg, skip_zero_advantage=False)
    assert len(learner.rows_to_run(everything, batch.advantages, batch.loss_mask)) == len(batch)


def test_a_minibatch_with_no_advantage_anywhere_still_takes_its_step_with_a_zero_gradient(learner):
    from tests.fakes import random_lm_batch

    learner.algo = AlgoConfig()
    learner.cfg = dataclasses.replace(learner.cfg, skip_zero_advantage=True)
    batch = random_lm_batch(learner.engine.module, seeds=[8], prompt_len=4, completion_len=6)
    batch = _zero_some_advantages(batch, list(range(len(batch))))
    run = learner.rows_to_run(torch.arange(len(batch)), batch.advantages, batch.loss_mask)
    assert len(run) == 1
    grad, ran = _gradient_of_rows(learner, batch, run)
    assert ran["count"] == 1 and grad.abs().max() == 0
    stats = learner.train_step(batch)
    assert stats["learner/skipped_fraction"] == pytest.approx(1 - 1 / len(batch))
