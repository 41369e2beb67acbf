"""The reasoning-RL loss terms against ALGORITHMS.md §6, values worked out by hand or in float64."""

import math

import pytest
import torch

from areal.algos import decoupled_ppo_loss
from areal.algos.loss_terms import MinibatchTotals, aggregate, behavior_weights, kl_penalty

# two sequences: the first scores 3 tokens, the second 1
LOSS = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])


@pytest.mark.parametrize(("mode", "expected"), [
    ("token-mean", (1 + 2 + 3 + 4) / 4),
    ("seq-mean-token-mean", ((1 + 2 + 3) / 3 + 4 / 1) / 2),
    ("seq-mean-token-sum", ((1 + 2 + 3) + 4) / 2),
    ("seq-mean-token-sum-norm", (1 + 2 + 3 + 4) / (2 * 8)),
])
def test_each_aggregation_mode_is_its_formula(mode, expected):
    assert aggregate(LOSS, MASK, mode, MinibatchTotals.of(MASK, norm_tokens=8)).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_the_parts_of_a_minibatch_add_up_to_its_aggregate(mode):
    torch.manual_seed(0)
    loss, mask = torch.randn(8, 6, dtype=torch.float64), (torch.rand(8, 6) > 0.3).long()
    totals = MinibatchTotals.of(mask, norm_tokens=6)
    whole = aggregate(loss, mask, mode, totals)
    for parts in (2, 4, 8):
        split = sum(aggregate(l, m, mode, totals) for l, m in zip(loss.chunk(parts), mask.chunk(parts)))
        assert split.item() == pytest.approx(whole.item(), rel=1e-12)


def test_token_weights_drop_or_truncate_at_the_cap():
    lp = torch.tensor([[0.0, math.log(3.0), math.log(0.5)]], dtype=torch.float64)
    lb = torch.zeros_like(lp)
    mask = torch.ones_like(lp, dtype=torch.long)
    w, keep = behavior_weights(lp, lb, mask, cap=2.0, mode="drop")
    assert w[0].tolist() == pytest.approx([1.0, 3.0, 0.5]) and keep.tolist() == [[True, False, True]]
    w, keep = behavior_weights(lp, lb, mask, cap=2.0, mode="truncate")
    assert w[0].tolist() == pytest.approx([1.0, 2.0, 0.5]) and keep.all()


def test_sequence_weights_are_the_product_over_the_sequences_tokens():
    # sequence 0: w_s = exp(log 2 + log 2) = 4 over its two scored tokens (the third is masked)
    lp = torch.tensor([[math.log(2.0), math.log(2.0), 5.0], [math.log(0.1), 0.0, 0.0]], dtype=torch.float64)
    lb = torch.zeros_like(lp)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    w, keep = behavior_weights(lp, lb, mask, cap=3.0, mode="drop", level="sequence")
    assert w[0].tolist() == pytest.approx([4.0] * 3) and w[1].tolist() == pytest.approx([0.1] * 3)
    assert not keep.any()  # 4 > 3 and 0.1 < 1/3: both sequences dropped
    w, keep = behavior_weights(lp, lb, mask, cap=3.0, mode="truncate", level="sequence")
    assert w[0].tolist() == pytest.approx([3.0] * 3) and w[1].tolist() == pytest.approx([0.1] * 3)
    assert keep.tolist() == mask.bool().tolist()


def test_a_non_finite_weight_is_zero():
    w, _ = behavior_weights(torch.tensor([[1000.0]]), torch.tensor([[-1000.0]]), torch.ones(1, 1), cap=None)
    assert w.item() == 0.0


@pytest.mark.parametrize("d", [-30.0, -3.0, -0.5, 0.0, 0.5, 3.0, 30.0])
def test_kl_estimators_are_schulmans_with_k3_clamped(d):
    lt, lr = torch.tensor([d], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)
    assert kl_penalty(lt, lr, "k1").item() == pytest.approx(d)
    assert kl_penalty(lt, lr, "k2").item() == pytest.approx(0.5 * d * d)
    k3 = math.exp(min(max(-d, -20.0), 20.0)) + d - 1.0
    assert kl_penalty(lt, lr, "k3").item() == pytest.approx(min(max(k3, -10.0), 10.0))


def test_k3_is_never_negative_and_zero_only_at_the_reference():
    d = torch.linspace(-5, 5, 101, dtype=torch.float64)
    k3 = kl_penalty(d, torch.zeros_like(d), "k3")
    assert (k3 >= 0).all() and k3[50].item() == 0.0 and (k3[:50] > 0).all()


def test_the_kl_gradient_flows_through_the_policy_only():
    lt, lr = torch.tensor([0.3], requires_grad=True), torch.tensor([0.1], requires_grad=True)
    kl_penalty(lt, lr, "k3").sum().backward()
    assert lt.grad.item() == pytest.approx(1.0 - math.exp(-0.2), rel=1e-6) and lr.grad is None


def test_the_ppo_loss_truncates_weights_and_reports_it():
    lt = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    lp = torch.tensor([[0.0, math.log(4.0)]], dtype=torch.float64)
    adv, mask = torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 2)
    loss, stats = decoupled_ppo_loss(lt, lp, torch.zeros_like(lp), adv, mask, behavior_weight_cap=2.0,
                                     behavior_weight_mode="truncate", eps_clip=10.0)
    # ratio r = exp(lt - lp): 1 and 1/4; pg = -A r: -1 and -1/4; weights 1 and min(4, 2) = 2; token-mean over 2
    assert loss.item() == pytest.approx((-1.0 * 1.0 + -0.25 * 2.0) / 2)
    assert stats["weight_truncated_fraction"].item() == 0.5 and stats["dropped_fraction"].item() == 0.0


@pytest.mark.parametrize("chunk", [0, 3, 64])
def test_chunked_entropy_is_the_full_softmaxs_with_its_gradient(chunk):
    from areal.algos import chunked_logprobs_entropy

    torch.manual_seed(0)
    hidden = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(5, 11, bias=False).double()
    targets = torch.randint(0, 11, (7,))
    lp, h = chunked_logprobs_entropy(hidden, head, targets, temperature=0.7, chunk_tokens=chunk, entropy_grad=True)
    logp = torch.log_softmax(head(hidden) / 0.7, dim=-1)
    expected_h = -(logp.exp() * logp).sum(-1)
    torch.testing.assert_close(lp, logp.gather(-1, targets[:, None]).squeeze(-1).float())
    torch.testing.assert_close(h, expected_h.float())
    grad, = torch.autograd.grad(h.sum(), hidden)
    expected, = torch.autograd.grad(expected_h.sum(), hidden)
    torch.testing.assert_close(grad, expected)


def test_a_measured_entropy_carries_no_gradient():
    from areal.algos import chunked_logprobs_entropy

    hidden = torch.randn(4, 3, requires_grad=True)
    _, h = chunked_logprobs_entropy(hidden, torch.nn.Linear(3, 6), torch.zeros(4, dtype=torch.long), chunk_tokens=2)
    assert not h.requires_grad


def test_mask_truncated_zeroes_the_loss_of_budget_ended_completions_after_the_advantages():
    from areal.batching import build_train_batch
    from areal.types import Trajectory, TrajectoryGroup

    def traj(reward, finish):
        return Trajectory((1, 2), (3, 4), (-0.1, -0.2), (0, 0), reward, "x", finish)

    group = TrajectoryGroup("p", (traj(1.0, "stop"), traj(0.0, "length"), traj(0.0, "stop")), 0)
    plain = build_train_batch([group], "grpo", 0)
    masked = build_train_batch([group], "grpo", 0, mask_truncated=True)
    assert masked.loss_mask[1].sum() == 0 and torch.equal(masked.loss_mask[[0, 2]], plain.loss_mask[[0, 2]])
    # the truncated completion's reward still counted: the advantages are those of all three
    torch.testing.assert_close(masked.advantages, plain.advantages)


def test_the_kl_as_a_token_reward_is_summed_into_the_advantages_of_the_tokens_before_it():
    from areal.algos.loss_terms import kl_in_reward

    adv = torch.ones(1, 4, dtype=torch.float64)
    lt = torch.tensor([[0.0, 0.3, 0.1, 0.5]], dtype=torch.float64)
    lr = torch.tensor([[0.0, 0.1, 0.2, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 1]])  # the first position is the prompt's
    # k1 = 0.2, -0.1, 0.5 on the scored tokens; to go: 0.6, 0.4, 0.5; times 0.5
    out = kl_in_reward(adv, lt, lr, mask, coef=0.5)
    assert out[0].tolist() == pytest.approx([1.0, 1.0 - 0.3, 1.0 - 0.2, 1.0 - 0.25])
