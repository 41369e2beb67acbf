"""Attack simulators follow ALGORITHMS.md §5 and touch only the Byzantine rows."""

import pytest
import torch

from areal.aggregation import ATTACKS, apply_attack

GRADS = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [5.0, 5.0, 5.0], [7.0, 7.0, 7.0]])


def attack(name, rows=(0, 1), **params):
    return apply_attack(name, GRADS, rows, generator=torch.Generator().manual_seed(0), **params)


def test_honest_rows_are_never_touched():
    for name in ATTACKS:
        out = attack(name)
        assert torch.equal(out[2:], GRADS[2:]), name


def test_reverse_sends_minus_ten_times_own():
    assert torch.equal(attack("reverse")[:2], -10 * GRADS[:2])


def test_sign_flip_negates_own():
    assert torch.equal(attack("sign_flip")[:2], -GRADS[:2])


def test_a_little_is_enough_uses_the_attackers_mean_and_std():
    own = GRADS[:2]
    expected = own.mean(dim=0) - 0.21 * own.std(dim=0)
    out = attack("little_is_enough")
    assert torch.allclose(out[0], expected) and torch.allclose(out[1], expected)


def test_fall_of_empires_sends_minus_a_tenth_of_the_attackers_mean():
    assert torch.allclose(attack("fall_of_empires")[:2], (-0.1 * GRADS[:2].mean(dim=0)).expand(2, 3))


def test_random_is_uniform_in_the_unit_interval():
    out = attack("random")[:2]
    assert ((out >= 0) & (out < 1)).all()


def test_gaussian_noise_is_large_and_seeded():
    assert attack("gaussian")[:2].abs().max() > 10
    assert torch.equal(attack("gaussian"), attack("gaussian"))


def test_dropped_coordinates_zero_a_fraction_of_own():
    out = apply_attack("dropped_coordinates", torch.ones(2, 10_000), [0], generator=torch.Generator().manual_seed(0))
    assert 0.45 < (out[0] == 0).float().mean().item() < 0.55
    assert torch.equal(out[1], torch.ones(10_000))


def test_unknown_attack_and_bad_ranks_are_named():
    with pytest.raises(ValueError, match="learner.byzantine.attack"):
        attack("bitflip")
    with pytest.raises(ValueError, match="learner.byzantine.ranks"):
        attack("reverse", rows=(9,))
