"""Advantage estimators against hand-computed values and reference loops (ALGORITHMS.md §3)."""

import math

import pytest
import torch

from areal.algos.advantages import (
    ADVANTAGE_ESTIMATORS,
    dr_grpo_advantages,
    gae_advantages,
    grpo_advantages,
    make_advantage_estimator,
    outcome_token_rewards,
    reinforce_pp_advantages,
    rloo_advantages,
    zero_variance_groups,
)

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 3.0]])
MASK = torch.ones(8, 3)


def test_grpo_hand_computed():
    adv = grpo_advantages(REWARDS, MASK)
    std0 = math.sqrt(4 * 0.25 / 3)  # unbiased std of [1, 0, 0, 1]
    assert adv[0, 0].item() == pytest.approx(0.5 / (std0 + 1e-6))
    assert adv[4, 0].item() == pytest.approx(-0.75 / (1.5 + 1e-6))  # std of [0, 0, 0, 3] = 1.5
    assert adv.shape == (8, 3)


def test_dr_grpo_only_centres():
    adv = dr_grpo_advantages(REWARDS, MASK)
    assert adv[:, 0].tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, -0.75, -0.75, -0.75, 2.25])


def test_rloo_is_the_leave_one_out_baseline():
    adv = rloo_advantages(REWARDS, MASK)
    r = REWARDS.flatten().tolist()
    expected = []
    for g in range(2):
        group = r[4 * g : 4 * g + 4]
        expected += [group[i] - (sum(group) - group[i]) / 3 for i in range(4)]
    assert adv[:, 0].tolist() == pytest.approx(expected)


def test_advantages_are_zero_on_masked_tokens():
    mask = torch.tensor([[1, 1, 0]] * 8)
    for fn in ADVANTAGE_ESTIMATORS.values():
        assert (fn(REWARDS, mask)[:, 2] == 0).all()


def test_reinforce_pp_whitens_returns_over_all_masked_tokens():
    rewards = torch.tensor([[1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])  # 3 tokens carry return 1, 1 token carries 0
    adv = reinforce_pp_advantages(rewards, mask)
    values = [1.0, 1.0, 1.0, 0.0]
    mu = sum(values) / 4
    sd = math.sqrt(sum((v - mu) ** 2 for v in values) / 4)
    assert adv[0].tolist() == pytest.approx([(1 - mu) / sd] * 3, rel=1e-6)
    assert adv[1, 0].item() == pytest.approx((0 - mu) / sd, rel=1e-6)
    assert adv[1, 1:].tolist() == [0.0, 0.0]


def test_reinforce_pp_discounts_from_the_last_token():
    mask = torch.tensor([[1, 1, 1, 0]])
    tok = outcome_token_rewards(torch.tensor([[2.0]]), mask)
    assert tok.tolist() == [[0.0, 0.0, 2.0, 0.0]]


def reference_gae(rewards, values, mask, gamma, lam):
    """Scalar loop over the valid tokens of each row."""
    out = []
    for r_row, v_row, m_row in zip(rewards, values, mask):
        idx = [t for t, m in enumerate(m_row) if m]
        adv_row = [0.0] * len(r_row)
        next_v, next_a = 0.0, 0.0
        for t in reversed(idx):
            delta = r_row[t] + gamma * next_v - v_row[t]
            next_a = delta + gamma * lam * next_a
            next_v = v_row[t]
            adv_row[t] = next_a
        out.append(adv_row)
    return out


@pytest.mark.parametrize("gamma, lam", [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0)])
def test_gae_matches_the_reference_loop(gamma, lam):
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(4, 7, generator=g)
    values = torch.randn(4, 7, generator=g)
    mask = torch.rand(4, 7, generator=g) > 0.3  # gaps inside rows included
    adv, returns = gae_advantages(rewards, values, mask, gamma, lam)
    ref = reference_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    assert torch.allclose(adv, torch.tensor(ref), atol=1e-5)
    assert torch.allclose(returns, (adv + values) * mask, atol=1e-6)


def test_gae_with_lambda_one_and_gamma_one_is_return_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.2, 0.5, 0.7]])
    adv, _ = gae_advantages(rewards, values, torch.ones(1, 3), 1.0, 1.0)
    assert adv.tolist()[0] == pytest.approx([0.8, 0.5, 0.3])


def test_zero_variance_groups_are_flagged():
    rewards = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.5, 0.5 + 1e-4]])
    assert zero_variance_groups(rewards).tolist() == [True, False, False]
    assert zero_variance_groups(rewards, atol=1e-3).tolist() == [True, False, True]


def test_group_estimators_refuse_single_sample_groups():
    with pytest.raises(ValueError, match="samples_per_prompt"):
        grpo_advantages(torch.ones(3, 1), torch.ones(3, 2))


def test_registry_names_the_choices_on_a_miss():
    assert make_advantage_estimator("rloo") is rloo_advantages
    with pytest.raises(ValueError, match="algo.advantage.*'grpo'"):
        make_advantage_estimator("ppo2")


# Ragged groups: samples whose reward failed (valid=False, reward NaN) are not part of their group.
RAGGED = torch.tensor([[1.0, math.nan, 0.0, 2.0], [0.5, 3.0, math.nan, math.nan], [math.nan, 4.0, 1.0, 1.0]])
VALID = ~torch.isnan(RAGGED)
RAGGED_MASK = (torch.rand(12, 5, generator=torch.Generator().manual_seed(3)) > 0.2).float()


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_group_estimators_see_a_group_as_its_valid_samples_alone(name):
    """Reference loop: each group's valid samples, estimated as a group of their own."""
    fn = ADVANTAGE_ESTIMATORS[name]
    adv = fn(RAGGED, RAGGED_MASK, valid=VALID)
    for g in range(3):
        rows = [4 * g + i for i in range(4) if VALID[g, i]]
        alone = fn(RAGGED[g][VALID[g]].reshape(1, -1), RAGGED_MASK[rows])
        torch.testing.assert_close(adv[rows], alone)
    assert not adv[~VALID.reshape(-1)].any()


def test_reinforce_pp_whitens_over_the_valid_samples_tokens_only():
    adv = reinforce_pp_advantages(RAGGED, RAGGED_MASK, valid=VALID)
    rows = VALID.reshape(-1)
    alone = reinforce_pp_advantages(RAGGED.reshape(1, -1)[:, rows], RAGGED_MASK[rows])
    torch.testing.assert_close(adv[rows], alone)
    assert not adv[~rows].any()


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_a_group_with_one_valid_sample_has_nothing_to_compare_with(name):
    rewards = torch.tensor([[2.0, math.nan, math.nan]])
    assert not ADVANTAGE_ESTIMATORS[name](rewards, torch.ones(3, 2), valid=~torch.isnan(rewards)).any()


def test_every_valid_sample_matches_the_plain_estimator():
    for fn in ADVANTAGE_ESTIMATORS.values():
        torch.testing.assert_close(fn(REWARDS, MASK, valid=torch.ones_like(REWARDS, dtype=torch.bool)),
                                   fn(REWARDS, MASK))


def test_a_nan_reward_must_be_marked_invalid():
    for fn in ADVANTAGE_ESTIMATORS.values():
        with pytest.raises(ValueError, match="valid=False"):
            fn(RAGGED, RAGGED_MASK)
