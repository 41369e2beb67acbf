"""Over data-parallel ranks too, a minibatch's gradient is the one a single learner computes from all of it, in
every aggregation mode (ALGORITHMS.md §6: S and the token counts are the whole minibatch's): two gloo ranks,
each with half the rows and its own micro-batch split, combine to the one-rank gradient."""

import dataclasses
import socket

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow
MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def _rank_main(rank: int, world: int, port: int, model_dir: str, out_dir: str) -> None:
    import os

    os.environ["DS_ACCELERATOR"] = "cpu"
    torch.set_num_threads(1)
    from areal.config import AlgoConfig, LearnerConfig
    from learners.deepspeed_setup import Rendezvous
    from learners.lm_learner import LMLearner
    from tests.fakes import random_lm_batch

    learner = LMLearner(model_dir, LearnerConfig(workers=world, lr=1e-3, minibatches=1, max_tokens_per_mb=12),
                        AlgoConfig(), rdv=Rendezvous(rank, world, master_port=port), seed=0)
    whole = random_lm_batch(learner.engine.module, [1, 2], completion_len=6, varied=True)
    batch = whole.split(world)[rank]
    for mode in MODES:
        learner.algo = AlgoConfig(loss_agg=mode, loss_norm_tokens=8)
        for p in learner.engine.module.parameters():
            p.grad = None
        mask = batch.loss_mask.to(learner.device)
        inputs = (learner.batch_logprobs(batch), batch.behavior_logprobs, batch.advantages, mask, None)
        learner.train_minibatch(batch, torch.arange(len(batch)), inputs, {}, {"tokens": 0, "positions": 0, "count": 0})
        learner.exchange.combine()  # the mean all-reduce of an optimizer step
        grad = torch.cat([p.grad.flatten() for p in learner.engine.module.parameters() if p.grad is not None])
        torch.save(grad, f"{out_dir}/{mode}-world{world}-rank{rank}.pt")
    # rows 0 and 1 (rank 0's under two ranks) have no advantage: that rank skips them, the other skips nothing
    advantages = whole.advantages.clone()
    advantages[:2] = 0.0
    batch = dataclasses.replace(whole, advantages=advantages).split(world)[rank]
    learner.algo = AlgoConfig()
    for tag, skip in (("kept", False), ("skipped", True)):
        learner.cfg = dataclasses.replace(learner.cfg, skip_zero_advantage=skip)
        for p in learner.engine.module.parameters():
            p.grad = None
        mask = batch.loss_mask.to(learner.device)
        rows = torch.arange(len(batch))
        inputs = (learner.batch_logprobs(batch), batch.behavior_logprobs, batch.advantages, mask, None)
        learner.train_minibatch(batch, rows, inputs, {}, {"tokens": 0, "positions": 0, "count": 0},
                                run=learner.rows_to_run(rows, batch.advantages, mask))
        learner.exchange.combine()
        grad = torch.cat([p.grad.flatten() for p in learner.engine.module.parameters() if p.grad is not None])
        torch.save(grad, f"{out_dir}/{tag}-world{world}-rank{rank}.pt")


def spawn(world: int, model_dir: str, out_dir: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(world, port, model_dir, out_dir), nprocs=world, join=True)


@pytest.fixture(scope="module")
def gradients(tmp_path_factory):
    from launch.tiny_model import TinyModelSize, make_random_tiny_model

    model = make_random_tiny_model(tmp_path_factory.mktemp("model"),
                                   TinyModelSize(hidden_size=64, intermediate_size=128, num_hidden_layers=2))
    out = tmp_path_factory.mktemp("grads")
    spawn(1, str(model), str(out))
    spawn(2, str(model), str(out))
    return {(mode, world, rank): torch.load(out / f"{mode}-world{world}-rank{rank}.pt")
            for mode in (*MODES, "kept", "skipped") for world, rank in ((1, 0), (2, 0), (2, 1))}


@pytest.mark.parametrize("mode", MODES)
def test_two_ranks_combine_to_the_one_rank_gradient(gradients, mode):
    one = gradients[(mode, 1, 0)]
    assert one.abs().sum() > 0
    torch.testing.assert_close(gradients[(mode, 2, 0)], one, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gradients[(mode, 2, 1)], one, rtol=1e-4, atol=1e-6)


def test_ranks_that_skip_different_numbers_of_zero_advantage_rows_still_combine_to_the_whole_gradient(gradients):
    one = gradients[("kept", 1, 0)]
    assert one.abs().sum() > 0
    torch.testing.assert_close(gradients[("skipped", 1, 0)], one, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gradients[("skipped", 2, 0)], one, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gradients[("skipped", 2, 1)], one, rtol=1e-4, atol=1e-6)
