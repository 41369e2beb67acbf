"""Attack simulators follow ALGORITHMS.md §5 and touch only the Byzantine rows.

Gradients live on ``device`` (cuda when present), where learners simulate attackers."""

import pytest
import torch

from areal.aggregation import ATTACKS, apply_attack

HOST_GRADS = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [5.0, 5.0, 5.0], [7.0, 7.0, 7.0]])


@pytest.fixture
def grads(device):
    return HOST_GRADS.to(device)


def attack(name, grads, rows=(0, 1), generator=None, **params):
    out = apply_attack(name, grads, rows, generator=generator or torch.Generator().manual_seed(0), **params)
    assert out.device == grads.device and out.dtype == grads.dtype
    return out


def test_honest_rows_are_never_touched(grads):
    for name in ATTACKS:
        out = attack(name, grads)
        assert torch.equal(out[2:], grads[2:]), name


def test_a_host_generator_sends_the_same_attack_on_every_device(grads):
    for name in ATTACKS:
        assert torch.equal(attack(name, grads).cpu(), attack(name, HOST_GRADS)), name


def test_a_generator_on_the_device_draws_there(device):
    grads = torch.ones(3, 1000, device=device)
    for name in ("random", "gaussian", "dropped_coordinates"):
        first = attack(name, grads, generator=torch.Generator(device).manual_seed(3))
        again = attack(name, grads, generator=torch.Generator(device).manual_seed(3))
        assert torch.equal(first, again) and not torch.equal(first[:2], grads[:2]), name


def test_reverse_sends_minus_ten_times_own(grads):
    assert torch.equal(attack("reverse", grads)[:2], -10 * grads[:2])


def test_sign_flip_negates_own(grads):
    assert torch.equal(attack("sign_flip", grads)[:2], -grads[:2])


def test_a_little_is_enough_uses_the_attackers_mean_and_std(grads):
    own = grads[:2]
    expected = own.mean(dim=0) - 0.21 * own.std(dim=0)
    out = attack("little_is_enough", grads)
    assert torch.allclose(out[0], expected) and torch.allclose(out[1], expected)


def test_fall_of_empires_sends_minus_a_tenth_of_the_attackers_mean(grads):
    assert torch.allclose(attack("fall_of_empires", grads)[:2], (-0.1 * grads[:2].mean(dim=0)).expand(2, 3))


def test_random_is_uniform_in_the_unit_interval(grads):
    out = attack("random", grads)[:2]
    assert ((out >= 0) & (out < 1)).all()


def test_gaussian_noise_is_large_and_seeded(grads):
    assert attack("gaussian", grads)[:2].abs().max() > 10
    assert torch.equal(attack("gaussian", grads), attack("gaussian", grads))


def test_dropped_coordinates_zero_a_fraction_of_own(device):
    out = attack("dropped_coordinates", torch.ones(2, 10_000, device=device), [0])
    assert 0.45 < (out[0] == 0).float().mean().item() < 0.55
    assert torch.equal(out[1], torch.ones(10_000, device=device))


def test_unknown_attack_and_bad_ranks_are_named(grads):
    with pytest.raises(ValueError, match="learner.byzantine.attack"):
        attack("bitflip", grads)
    with pytest.raises(ValueError, match="learner.byzantine.ranks"):
        attack("reverse", grads, rows=(9,))
