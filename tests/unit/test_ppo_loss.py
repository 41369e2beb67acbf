"""decoupled_ppo_loss against ALGORITHMS.md §2, re-derived by hand and in float64."""

import math

import pytest
import torch

from areal.algos.ppo import decoupled_ppo_loss, ppo_loss


def reference_loss(lt, lp, lb, adv, mask, eps=0.2, eps_high=None, dual=None, cap=None, level="token"):
    """Per-token Python loops in float64, straight from the formula."""
    eps_high = eps if eps_high is None else eps_high
    B, T = len(lt), len(lt[0])
    total, count = 0.0, 0
    for b in range(B):
        toks = [t for t in range(T) if mask[b][t]]
        if level == "sequence":
            n = max(1, len(toks))
            r_seq = math.exp(sum(lt[b][t] - lp[b][t] for t in toks) / n)
            a_seq = sum(adv[b][t] for t in toks) / n
        for t in toks:
            r = r_seq if level == "sequence" else math.exp(lt[b][t] - lp[b][t])
            a = a_seq if level == "sequence" else adv[b][t]
            pg = max(-a * r, -a * min(max(r, 1 - eps), 1 + eps_high))
            if dual is not None:
                pg = min(pg, dual * abs(a))
            w = math.exp(lp[b][t] - lb[b][t])
            if cap is None or w <= cap:
                total += pg * w
            count += 1
    return total / max(count, 1)


def random_inputs(seed, B=3, T=5):
    g = torch.Generator().manual_seed(seed)
    lt = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    lp = lt + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)
    lb = lp + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[:, 0] = True
    return lt, lp, lb, adv, mask


def test_hand_computed_single_token():
    # r = e^0.5 = 1.6487 > 1.2 with A = 1: clipped branch wins, pg = -1.2; w = e^0 = 1
    lt = torch.tensor([[0.5]], dtype=torch.float64)
    zero = torch.zeros(1, 1, dtype=torch.float64)
    loss, stats = decoupled_ppo_loss(lt, zero, zero, torch.ones(1, 1, dtype=torch.float64), torch.ones(1, 1))
    assert loss.item() == pytest.approx(-1.2)
    assert stats["clip_fraction"].item() == 1.0
    # negative advantage: unclipped -A r = e^0.5 is larger than -A 1.2
    loss, stats = decoupled_ppo_loss(lt, zero, zero, -torch.ones(1, 1, dtype=torch.float64), torch.ones(1, 1))
    assert loss.item() == pytest.approx(math.exp(0.5))
    assert stats["clip_fraction"].item() == 0.0


def test_behaviour_weight_scales_the_token_loss():
    # lt = lp: r = 1, pg = -A = -2; w = exp(lp - lb) = exp(0.3)
    lp = torch.tensor([[-1.0]], dtype=torch.float64)
    loss, stats = decoupled_ppo_loss(lp.clone(), lp, lp - 0.3, torch.full((1, 1), 2.0, dtype=torch.float64),
                                     torch.ones(1, 1))
    assert loss.item() == pytest.approx(-2.0 * math.exp(0.3))
    assert stats["behavior_weight_mean"].item() == pytest.approx(math.exp(0.3))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"eps_clip": 0.1, "eps_clip_high": 0.28},
        {"dual_clip": 3.0},
        {"behavior_weight_cap": 1.5},
        {"level": "sequence"},
        {"level": "sequence", "dual_clip": 2.0, "behavior_weight_cap": 2.0},
    ],
)
def test_matches_float64_loop_reference(seed, options):
    lt, lp, lb, adv, mask = random_inputs(seed)
    loss, _ = decoupled_ppo_loss(lt, lp, lb, adv, mask, **options)
    ref = reference_loss(
        lt.tolist(), lp.tolist(), lb.tolist(), adv.tolist(), mask.tolist(),
        eps=options.get("eps_clip", 0.2), eps_high=options.get("eps_clip_high"),
        dual=options.get("dual_clip"), cap=options.get("behavior_weight_cap"), level=options.get("level", "token"),
    )
    assert loss.item() == pytest.approx(ref, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_gradient_matches_autograd_of_the_reference(level):
    lt, lp, lb, adv, mask = random_inputs(7)
    lt = lt.requires_grad_(True)
    loss, _ = decoupled_ppo_loss(lt, lp, lb, adv, mask, dual_clip=3.0, level=level)
    (grad,) = torch.autograd.grad(loss, lt)
    # numerical gradient of the loop reference
    eps = 1e-6
    num = torch.zeros_like(lt)
    base = lt.detach()
    for idx in torch.nonzero(torch.ones_like(base)).tolist():
        for sign in (1, -1):
            bumped = base.clone()
            bumped[tuple(idx)] += sign * eps
            val = reference_loss(bumped.tolist(), lp.tolist(), lb.tolist(), adv.tolist(), mask.tolist(),
                                 dual=3.0, level=level)
            num[tuple(idx)] += sign * val / (2 * eps)
    assert torch.allclose(grad, num, atol=1e-6)
    assert (grad[~mask] == 0).all(), "masked tokens must get no gradient"


def test_cap_drops_tokens_but_keeps_the_original_denominator():
    lt = torch.zeros(1, 4, dtype=torch.float64)
    lb = torch.tensor([[0.0, 0.0, -2.0, -2.0]], dtype=torch.float64)  # w = 1, 1, e^2, e^2
    adv = torch.ones(1, 4, dtype=torch.float64)
    loss, stats = decoupled_ppo_loss(lt, lt, lb, adv, torch.ones(1, 4), behavior_weight_cap=2.0)
    assert loss.item() == pytest.approx((-1.0 - 1.0) / 4)  # two kept tokens, divided by all four
    assert stats["dropped_by_cap"].item() == 2
    assert stats["dropped_fraction"].item() == pytest.approx(0.5)


def test_non_finite_behaviour_weight_becomes_zero():
    lt = torch.zeros(1, 2, dtype=torch.float64)
    lb = torch.tensor([[0.0, -math.inf]], dtype=torch.float64)
    loss, stats = decoupled_ppo_loss(lt, lt, lb, torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 2))
    assert stats["behavior_weight"][0, 1].item() == 0.0
    assert loss.item() == pytest.approx(-0.5)


def test_dual_clip_bounds_negative_advantage_loss():
    lt = torch.tensor([[2.0]], dtype=torch.float64)  # r = e^2 = 7.39, A = -1: pg = 7.39 -> min(7.39, 3)
    zero = torch.zeros(1, 1, dtype=torch.float64)
    loss, stats = decoupled_ppo_loss(lt, zero, zero, -torch.ones(1, 1, dtype=torch.float64), torch.ones(1, 1),
                                     dual_clip=3.0)
    assert loss.item() == pytest.approx(3.0)
    assert stats["dual_clip_fraction"].item() == 1.0


def test_plain_ppo_is_the_decoupled_loss_with_proximal_equal_behaviour():
    lt, lp, _, adv, mask = random_inputs(3)
    a, _ = ppo_loss(lt, lp, adv, mask)
    b, stats = decoupled_ppo_loss(lt, lp, lp, adv, mask)
    assert a.item() == b.item()
    assert torch.all(stats["behavior_weight"] == 1)


def test_sequence_level_uses_masked_means():
    lt = torch.tensor([[0.1, 0.3, 9.0]], dtype=torch.float64)  # third token masked out
    zero = torch.zeros_like(lt)
    adv = torch.tensor([[1.0, 3.0, 100.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    loss, _ = decoupled_ppo_loss(lt, zero, zero, adv, mask, level="sequence")
    r, a = math.exp(0.2), 2.0  # r_s = exp(mean(0.1, 0.3)), A_s = mean(1, 3)
    pg = max(-a * r, -a * min(r, 1.2))
    assert loss.item() == pytest.approx(pg * 2 / 2)


def test_denominator_override_for_token_sum_normalisation():
    lt, lp, lb, adv, mask = random_inputs(5)
    default, _ = decoupled_ppo_loss(lt, lp, lb, adv, mask)
    fixed, _ = decoupled_ppo_loss(lt, lp, lb, adv, mask, denominator=100.0)
    assert fixed.item() == pytest.approx(default.item() * mask.sum().item() / 100.0)


def test_approx_kl_is_zero_on_policy_and_positive_off_policy():
    lt, lp, lb, adv, mask = random_inputs(1)
    _, on = decoupled_ppo_loss(lp.clone(), lp, lb, adv, mask)
    _, off = decoupled_ppo_loss(lt, lp, lb, adv, mask)
    assert on["approx_kl"].item() == 0.0
    assert off["approx_kl"].item() > 0


def test_empty_mask_gives_zero_loss_not_nan():
    lt, lp, lb, adv, _ = random_inputs(2)
    loss, stats = decoupled_ppo_loss(lt, lp, lb, adv, torch.zeros_like(lt, dtype=torch.bool))
    assert loss.item() == 0.0 and stats["clip_fraction"].item() == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"level": "group"}, "level"),
        ({"eps_clip": 0.0}, "eps_clip"),
        ({"dual_clip": 1.0}, "dual_clip"),
        ({"behavior_weight_cap": -1.0}, "behavior_weight_cap"),
    ],
)
def test_bad_options_name_the_argument(kwargs, message):
    lt, lp, lb, adv, mask = random_inputs(0)
    with pytest.raises(ValueError, match=message):
        decoupled_ppo_loss(lt, lp, lb, adv, mask, **kwargs)


def test_shape_mismatch_names_the_input():
    lt, lp, lb, adv, mask = random_inputs(0)
    with pytest.raises(ValueError, match="advantages has shape"):
        decoupled_ppo_loss(lt, lp, lb, adv[:, :2], mask)
