"""Packed, token-budget micro-batches and chunked log-probs change the learner's memory, not its update.

The reference is the padded full-logits path (``packing=false``, ``logprob_chunk_tokens=0``,
the whole minibatch in one forward). Every other layout must give the same proximal
log-probs, the same minibatch loss and the same gradients (fp32: relative 1e-5).
"""

import subprocess
import sys
import textwrap

import pytest
import torch

from areal.config import AlgoConfig, LearnerConfig
from tests.fakes import random_lm_batch

pytestmark = pytest.mark.slow

REFERENCE = {"packing": False, "logprob_chunk_tokens": 0, "max_tokens_per_mb": 10**6}
LAYOUTS = {
    "packed_chunked": {"packing": True, "prefix_row_tokens": 0, "logprob_chunk_tokens": 5, "max_tokens_per_mb": 24},
    "padded_chunked": {"packing": False, "logprob_chunk_tokens": 7, "max_tokens_per_mb": 40},
    "packed_whole_head": {"packing": True, "prefix_row_tokens": 0, "logprob_chunk_tokens": 0, "max_tokens_per_mb": 30},
    "packed_long_rows": {"packing": True, "prefix_row_tokens": 0, "pack_row_tokens": 60, "logprob_chunk_tokens": 9,
                         "max_tokens_per_mb": 60},
    "checkpointed": {"packing": True, "prefix_row_tokens": 0, "logprob_chunk_tokens": 16, "max_tokens_per_mb": 64,
                     "gradient_checkpointing": True},
    # each group's prompt once per forward (areal.prefix_sharing); short rows split some families
    "shared_prefix": {"packing": True, "logprob_chunk_tokens": 5, "max_tokens_per_mb": 64},
    "shared_prefix_short_rows": {"packing": True, "prefix_row_tokens": 30, "logprob_chunk_tokens": 0,
                                 "max_tokens_per_mb": 30},
    "shared_prefix_checkpointed": {"packing": True, "logprob_chunk_tokens": 16, "max_tokens_per_mb": 128,
                                   "gradient_checkpointing": True},
}
SHARED = {name for name, layout in LAYOUTS.items() if layout["packing"] and layout.get("prefix_row_tokens", 1)}
PORTS = iter(range(29700, 29800))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from launch.tiny_model import TinyModelSize, make_random_tiny_model

    return make_random_tiny_model(tmp_path_factory.mktemp("model"),
                                  TinyModelSize(hidden_size=64, intermediate_size=128, num_hidden_layers=2))


def make_learner(model_dir, level="token", **layout):
    from learners.deepspeed_setup import Rendezvous
    from learners.lm_learner import LMLearner

    algo = AlgoConfig(level=level, behavior_weight_cap=1.5)
    return LMLearner(str(model_dir), LearnerConfig(lr=1e-3, minibatches=1, **layout), algo,
                     temperature=0.8, rdv=Rendezvous(master_port=next(PORTS)))


def off_policy(batch, seed=0):
    """The batch with behaviour log-probs moved off the model's, so importance weights and the cap act."""
    gen = torch.Generator().manual_seed(seed)
    noise = 0.5 * torch.randn(batch.behavior_logprobs.shape, generator=gen)
    return type(batch)(batch.input_ids, batch.attention_mask, batch.loss_mask,
                       batch.behavior_logprobs + noise * batch.loss_mask, batch.advantages, batch.versions)


def loss_and_gradients(learner, batch):
    """The proximal log-probs, loss and per-parameter gradient of one minibatch (no optimizer step)."""
    learner.engine.train()
    proximal = learner.batch_logprobs(batch)
    dev = learner.device
    inputs = (proximal, batch.behavior_logprobs.to(dev), batch.advantages.to(dev), batch.loss_mask.to(dev), None)
    stats, forwards = {}, {"tokens": 0, "positions": 0, "count": 0}
    learner.train_minibatch(batch, torch.arange(len(batch)), inputs, stats, forwards)
    grads = {name: p.grad.detach().clone() for name, p in learner.engine.module.named_parameters()}
    for p in learner.engine.module.parameters():
        p.grad = None
    return proximal.cpu(), stats, grads, forwards


@pytest.fixture(scope="module")
def batch(model_dir):
    learner = make_learner(model_dir, **REFERENCE)
    return off_policy(random_lm_batch(learner.engine, list(range(6)), prompt_len=9, completion_len=12, samples=4,
                                      varied=True))


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_every_layout_gives_the_reference_loss_and_gradients(model_dir, batch, level):
    ref_prox, ref_stats, ref_grads, ref_fw = loss_and_gradients(make_learner(model_dir, level, **REFERENCE), batch)
    assert ref_fw["count"] == 1 and ref_fw["positions"] > ref_fw["tokens"]  # one padded forward
    assert ref_stats["dropped_fraction"][0] > 0  # the cap acts, so the weights matter
    for name, layout in LAYOUTS.items():
        prox, stats, grads, forwards = loss_and_gradients(make_learner(model_dir, level, **layout), batch)
        assert forwards["count"] > 1, name
        if name in SHARED:  # the prompts are computed once per group
            assert forwards["tokens"] < ref_fw["tokens"], name
        else:
            assert forwards["tokens"] == ref_fw["tokens"], name
        if layout["packing"]:
            assert forwards["positions"] < ref_fw["positions"], name  # less padding than one row per sequence
        torch.testing.assert_close(prox, ref_prox, rtol=1e-5, atol=1e-6, msg=name)
        for key in ("loss", "clip_fraction", "dropped_fraction", "behavior_weight_mean", "approx_kl"):
            assert stats[key][0] == pytest.approx(ref_stats[key][0], rel=1e-5, abs=1e-7), (name, key)
        for param, grad in ref_grads.items():
            torch.testing.assert_close(grads[param], grad, rtol=1e-5, atol=1e-7, msg=f"{name}: {param}")


def test_a_train_step_reports_its_micro_batches_and_padding(model_dir, batch):
    packed = make_learner(model_dir, **LAYOUTS["packed_long_rows"]).train_step(batch)
    assert packed["learner/micro_batches"] > 1
    assert packed["learner/proximal_seconds"] > 0 and packed["learner/optimizer_seconds"] > 0
    padded = make_learner(model_dir, **REFERENCE).train_step(batch)
    assert padded["learner/micro_batches"] == 1
    assert 0 <= packed["learner/padding_fraction"] < padded["learner/padding_fraction"] < 1



def update_with_a_separate_proximal_pass(learner, batch):
    """The update as written in ALGORITHMS.md §2: every row's proximal log-probs from a no-grad pass at the
    step's starting weights, then one optimizer step per minibatch."""
    learner.engine.train()
    dev = learner.device
    proximal = learner.batch_logprobs(batch)
    mask = batch.loss_mask.to(dev)
    inputs = (proximal, batch.behavior_logprobs.to(dev), batch.advantages.to(dev), mask, None)
    stats, forwards = {}, {"tokens": 0, "positions": 0, "count": 0}
    for part in torch.tensor_split(torch.arange(len(batch)), learner.cfg.minibatches):
        learner.train_minibatch(batch, part, inputs, stats, forwards)
        learner.optimizer_step(stats)
    stats["behavior_proximal_kl"] = [float(((inputs[1] - proximal) * mask).sum() / mask.sum())]
    return stats


@pytest.mark.parametrize("minibatches", [1, 3])
def test_the_first_minibatch_forward_is_its_proximal_pass_and_the_update_is_unchanged(model_dir, batch, minibatches):
    """train_step skips the separate proximal pass for the first minibatch's rows (its forward runs on the
    starting weights): the proximal log-probs, losses and clip statistics are those of the textbook order, and
    with one minibatch (the same forwards in the same order) so are the weights after the step, bit for bit.

    (With several minibatches the later rows' proximal pass packs fewer rows, which moves float rounding;
    Adam turns the rounding noise of a zero-in-theory gradient, such as a key bias's, into whole steps, so
    only the statistics are compared there.)"""
    layout = LAYOUTS["packed_chunked"]
    fast, slow = make_learner(model_dir, **layout), make_learner(model_dir, **layout)
    fast.cfg.minibatches = slow.cfg.minibatches = minibatches
    stats = fast.train_step(batch)
    reference = update_with_a_separate_proximal_pass(slow, batch)
    assert stats["learner/micro_batches"] == sum(
        len(fast.micro_batches(batch, part)) for part in torch.tensor_split(torch.arange(len(batch)), minibatches))
    for key in ("loss", "clip_fraction", "dropped_fraction", "approx_kl", "behavior_proximal_kl"):
        expected = sum(reference[key]) / len(reference[key])
        assert stats[f"learner/{key}"] == pytest.approx(expected, rel=1e-5, abs=1e-7), key
    assert stats["learner/behavior_proximal_kl"] != 0  # measured over every row, the first minibatch's included
    if minibatches == 1:
        for (name, a), b in zip(fast.engine.module.named_parameters(), slow.engine.module.parameters()):
            assert torch.equal(a, b), name

MEMORY_CHILD = textwrap.dedent("""
    import resource, sys, torch
    torch.set_num_threads(2)
    from areal.config import AlgoConfig, LearnerConfig
    from launch.model_shapes import SHAPES, save_random_model
    from learners.deepspeed_setup import Rendezvous
    from areal.batching import build_train_batch
    from areal.types import Trajectory, TrajectoryGroup
    from learners.lm_learner import LMLearner

    path, port = sys.argv[1], int(sys.argv[2])
    save_random_model(path, SHAPES["tiny-151k"])
    cfg = LearnerConfig(lr=1e-4, minibatches=2, max_tokens_per_mb=2048, logprob_chunk_tokens=128)
    learner = LMLearner(path, cfg, AlgoConfig(), rdv=Rendezvous(master_port=port))
    gen = torch.Generator().manual_seed(0)
    def sample(reward):  # behaviour log-probs near a uniform policy's (ln 151,936 = 11.93)
        ids = torch.randint(0, 151_936, (320,), generator=gen).tolist()
        return Trajectory(tuple(ids[:200]), tuple(ids[200:]), (-11.9,) * 120, (0,) * 120, reward)
    groups = [TrajectoryGroup(str(g), tuple(sample(float(i % 2)) for i in range(4)), 0) for g in range(4)]
    batch = build_train_batch(groups, "grpo", pad_id=0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats = learner.train_step(batch)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(before * 1024, after * 1024, batch.input_ids.numel(), stats["learner/micro_batches"])
""")


def test_a_large_vocabulary_step_holds_one_chunk_of_logits_not_the_batch(tmp_path):
    """16 sequences of 320 tokens under a 151,936-token vocabulary: the batch's float32 logits alone are 3.1 GB;
    the step's peak stays far below that (one 128-token chunk of logits is 78 MB)."""
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(tmp_path / "model"), str(next(PORTS))],
                         capture_output=True, text=True, timeout=600, check=True)
    before, after, positions, micro_batches = (float(x) for x in out.stdout.split()[-4:])
    logits_bytes = positions * 151_936 * 4
    assert logits_bytes > 3e9 and micro_batches >= 4
    assert after - before < 1e9, f"the step grew the peak RSS by {(after - before) / 1e9:.2f} GB"
