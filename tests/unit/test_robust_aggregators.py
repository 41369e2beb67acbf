"""Baseline aggregators: hand cases from their definitions, preconditions, and behaviour under attack.

Gradients live on ``device`` (cuda when present), where learners aggregate them."""

import math

import pytest
import torch

from areal.aggregation import (
    AGGREGATORS,
    ATTACKS,
    apply_attack,
    bulyan,
    coordinate_median,
    geometric_median,
    krum,
    make_aggregator,
    mean,
    multi_krum,
    trimmed_mean,
)

# five 1-d "gradients" plus an outlier
LINE = [[0.0], [1.0], [2.0], [3.0], [100.0]]


def test_coordinate_median_takes_the_lower_middle_for_even_n(device):
    grads = torch.tensor([[1.0, 10.0], [2.0, 40.0], [3.0, 20.0], [4.0, 30.0]], device=device)
    assert coordinate_median(grads, f=1).tolist() == [2.0, 20.0]


def test_trimmed_mean_drops_f_per_end_per_coordinate(device):
    grads = torch.tensor([[0.0, 5.0], [1.0, -100.0], [2.0, 6.0], [100.0, 7.0]], device=device)
    assert trimmed_mean(grads, f=1).tolist() == [1.5, 5.5]


def test_krum_scores_sum_the_n_minus_f_minus_1_closest(device):
    # n=5, f=1: each score sums the 3 smallest squared distances to the others
    scores = []
    pts = [row[0] for row in LINE]
    for i, a in enumerate(pts):
        d = sorted((a - b) ** 2 for j, b in enumerate(pts) if j != i)
        scores.append(sum(d[:3]))
    best = min(range(5), key=scores.__getitem__)
    assert krum(torch.tensor(LINE, device=device), f=1).item() == pts[best] == 1.0


def test_multi_krum_averages_the_n_minus_f_minus_2_best(device):
    pts = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [100.0], [-100.0]], device=device)
    # n=7, f=2: scores use the 4 closest; the 3 lowest scores are at 1, 2, 3
    assert multi_krum(pts, f=2).item() == pytest.approx(2.0)


def test_bulyan_selects_by_krum_then_trims_around_the_median(device):
    pts = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [1000.0]], device=device)
    # n=7, f=1: theta = 5 picks by repeated Krum -> {0..4} or nearby, beta = 3 closest to the median
    out = bulyan(pts, f=1).item()
    assert 1.0 <= out <= 4.0
    assert bulyan(torch.tensor([[1.0, 2.0]] * 7, device=device), f=1).tolist() == [1.0, 2.0]


def test_bulyan_hand_case(device):
    pts = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [10.0], [-50.0]], device=device)
    # Krum (f=1, 4 closest) on the shrinking set picks the values 3, 4, 2, 1, 0 in turn;
    # their median is 2 and the beta = 3 values closest to it are 1, 2, 3.
    assert bulyan(pts, f=1).item() == pytest.approx(2.0)


def test_geometric_median_of_points_on_a_line_is_their_median(device):
    assert geometric_median(torch.tensor(LINE, device=device), f=1).item() == pytest.approx(2.0, abs=1e-4)


def test_geometric_median_minimises_the_sum_of_distances(device):
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(9, 3, generator=g, dtype=torch.float64)
    z = geometric_median(pts.to(device), max_iter=1000, tol=1e-12).cpu()  # the cost is checked on the host
    cost = lambda c: torch.linalg.vector_norm(pts - c, dim=1).sum().item()
    for _ in range(20):
        assert cost(z) <= cost(z + 1e-3 * torch.randn(3, generator=g, dtype=torch.float64)) + 1e-12


@pytest.mark.parametrize(
    "name, n, f, rule",
    [
        ("coordinate_median", 4, 2, "n >= 2f \\+ 1"),
        ("trimmed_mean", 4, 2, "n >= 2f \\+ 1"),
        ("krum", 6, 2, "n >= 2f \\+ 3"),
        ("multi_krum", 6, 2, "n >= 2f \\+ 3"),
        ("bulyan", 10, 2, "n >= 4f \\+ 3"),
        ("geometric_median", 4, 2, "n >= 2f \\+ 1"),
    ],
)
def test_preconditions_are_refused_with_the_rule(name, n, f, rule, device):
    with pytest.raises(ValueError, match=f"{name}: needs {rule}"):
        AGGREGATORS[name](torch.randn(n, 3, device=device), f)


def test_registry_lists_the_choices_on_a_miss():
    with pytest.raises(ValueError, match="learner.aggregator.*'bulyan'"):
        make_aggregator("average")
    assert make_aggregator("mean") is mean


def angle_deg(a, b):
    cos = torch.nn.functional.cosine_similarity(a.double().cpu(), b.double().cpu(), dim=0).clamp(-1, 1)
    return math.degrees(math.acos(cos.item()))


def honest_gradients(device, n=11, d=500, seed=0):
    g = torch.Generator().manual_seed(seed)  # drawn on the host: the same gradients on every device
    base = torch.randn(d, generator=g)
    return (base + 0.3 * torch.randn(n, d, generator=g)).to(device)


ROBUST = [name for name in AGGREGATORS if name != "mean"]
HONEST_ANGLE = 25.0  # a single honest gradient sits ~17 degrees from the honest mean at this noise


def test_without_attackers_every_aggregator_is_close_to_the_mean(device):
    grads = honest_gradients(device)
    for name, fn in AGGREGATORS.items():
        assert angle_deg(fn(grads, 2), grads.mean(dim=0)) < HONEST_ANGLE, name


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_robust_aggregators_stay_near_the_honest_mean_under_attack(attack, device):
    n, f = 11, 2
    clean = honest_gradients(device, n)
    honest_mean = clean[f:].mean(dim=0)
    attacked = apply_attack(attack, clean, range(f), generator=torch.Generator().manual_seed(1))
    for name in ROBUST:
        assert angle_deg(AGGREGATORS[name](attacked, f), honest_mean) < HONEST_ANGLE, f"{name} under {attack}"


@pytest.mark.parametrize("attack", ["reverse", "gaussian"])
def test_the_mean_is_steered_by_attacks_the_robust_ones_resist(attack, device):
    clean = honest_gradients(device)
    attacked = apply_attack(attack, clean, range(2), generator=torch.Generator().manual_seed(1))
    assert angle_deg(mean(attacked, 2), clean[2:].mean(dim=0)) > 2 * HONEST_ANGLE
