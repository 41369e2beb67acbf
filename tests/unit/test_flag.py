"""Flag Aggregator: equal to a dense, literal implementation of ALGORITHMS.md §5, and its invariances.

The aggregator runs on ``device`` (cuda when present), where learners aggregate; the dense reference runs on
the host in float64 and results are compared there."""

import pytest
import torch

from areal.aggregation import flag, flag_aggregate, flag_default_init, flag_objective


def dense_reference(grads, m, lam, iters, init):
    """The reference algorithm as written: explicit d x (p + p(p-1)) matrix and its SVD, float64."""
    x = (grads / grads.norm(dim=1, keepdim=True)).double().T  # [d, p]
    p = x.shape[1]
    y = init.double()

    def energy(y):
        return flag_objective(y.T @ x)

    for _ in range(iters):
        cols = [((1 - (y.T @ x[:, i]).pow(2).sum()).abs() + 1e-7) ** -0.25 * x[:, i] for i in range(p)]
        if lam > 0:
            for i in range(p):
                for j in range(p):
                    if i != j:
                        u = x[:, i] - x[:, j]
                        w = ((1 - (y.T @ u).pow(2).sum()).abs() + 1e-7) ** -0.25
                        cols.append(w * lam / (p * (p - 1)) * u)
        left, _, _ = torch.linalg.svd(torch.stack(cols, dim=1), full_matrices=False)
        y_new = left[:, :m]
        if not energy(y_new) < energy(y):
            break
        y = y_new
    return (y @ (y.T @ x.sum(dim=1))) / m


def make_grads(seed, n=6, d=40, f=0):
    """float64 gradients drawn on the host (the same on every device)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=g, dtype=torch.float64)
    grads = base + 0.6 * torch.randn(n, d, generator=g, dtype=torch.float64)
    grads[:f] = -5 * grads[:f]
    return grads


def on(device, grads, m, *args, **kwargs):
    """``flag_aggregate`` of host ``grads`` (and ``init``) run on ``device``; the result back on the host."""
    if kwargs.get("init") is not None:
        kwargs["init"] = kwargs["init"].to(device)
    out = flag_aggregate(grads.to(device), m, *args, **kwargs)
    assert out.device.type == torch.device(device).type
    return out.cpu()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("m, lam, iters", [(1, 0.0, 1), (2, 0.0, 1), (3, 0.5, 1), (2, 2.0, 5), (4, 0.0, 10)])
def test_matches_the_dense_reference(seed, m, lam, iters, device):
    grads = make_grads(seed, f=seed % 2)
    init = flag_default_init(grads.shape[1], m, torch.float64)
    ours = on(device, grads, m, lam=lam, iters=iters)
    ref = dense_reference(grads, m, lam, iters, init)
    assert torch.allclose(ours, ref, atol=1e-9), (ours - ref).abs().max()


def test_all_agreeing_gradients_give_the_common_vector(device):
    common = torch.randn(50, dtype=torch.float64)
    grads = common.repeat(7, 1)
    raw = on(device, grads, m=2)
    # raw output: (1/m) Y Y^T sum x_i = (p / m) x for the unit vector x
    assert torch.allclose(raw, 7 / 2 * common / common.norm(), atol=1e-9)
    assert torch.allclose(on(device, grads, m=2, rescale="median_norm"), common, atol=1e-9)


def test_rotating_init_inside_its_span_changes_nothing(device):
    grads = make_grads(0, n=8, d=30, f=2)
    init = flag_default_init(30, 3, torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))
    for iters in (1, 4):
        a = on(device, grads, 3, lam=1.0, iters=iters, init=init)
        b = on(device, grads, 3, lam=1.0, iters=iters, init=init @ rotation)
        assert torch.allclose(a, b, atol=1e-9)


def test_without_init_the_result_is_seed_deterministic(device):
    grads = make_grads(1)
    torch.manual_seed(123)
    a = on(device, grads, 2)
    torch.manual_seed(456)
    b = on(device, grads, 2)
    assert torch.equal(a, b)


def test_the_seeded_start_is_the_same_on_every_device(device):
    start = flag_default_init(40, 3, torch.float64, device)
    assert start.device.type == device.type and torch.equal(start.cpu(), flag_default_init(40, 3, torch.float64))


def test_scale_invariance_per_worker(device):
    grads = make_grads(2)
    scaled = grads * torch.tensor([1.0, 10.0, 0.1, 3.0, 7.0, 0.5], dtype=torch.float64)[:, None]
    assert torch.allclose(on(device, grads, 2), on(device, scaled, 2), atol=1e-9)


def test_zero_rows_carry_no_direction_and_are_left_out(device):
    grads = make_grads(3, n=5)
    with_zero = torch.cat([grads, torch.zeros(1, grads.shape[1], dtype=grads.dtype)])
    init = flag_default_init(grads.shape[1], 2, torch.float64)
    assert torch.allclose(on(device, with_zero, 2, init=init), on(device, grads, 2, init=init), atol=1e-9)
    assert torch.equal(on(device, torch.zeros(3, 4), 1), torch.zeros(4))


def test_rank_deficient_input_matches_the_reference(device):
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(2, 25, generator=g, dtype=torch.float64)
    grads = torch.randn(6, 2, generator=g, dtype=torch.float64) @ basis  # rank 2, m = 3 > rank
    init = flag_default_init(25, 3, torch.float64)
    assert torch.allclose(on(device, grads, 3), dense_reference(grads, 3, 0.0, 1, init), atol=1e-8)
    assert torch.allclose(on(device, grads, 3, iters=3), dense_reference(grads, 3, 0.0, 3, init), atol=1e-8)


def test_float32_large_d_runs_in_the_span(device):
    grads = torch.randn(8, 200_000, device=device)
    out = flag_aggregate(grads, 2, lam=1.0)
    assert out.shape == (200_000,) and out.dtype == torch.float32 and out.device == grads.device
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"m": 0}, "m \\(subspace dimension\\)"),
        ({"m": 2, "lam": -1.0}, "lam"),
        ({"m": 2, "iters": 0}, "iters"),
        ({"m": 2, "rescale": "max"}, "rescale"),
        ({"m": 2, "init": torch.ones(10, 2)}, "orthonormal"),
        ({"m": 2, "init": torch.eye(10)[:, :3]}, "init must be"),
    ],
)
def test_bad_arguments_are_named(kwargs, message, device):
    if "init" in kwargs:
        kwargs = {**kwargs, "init": kwargs["init"].to(device)}
    with pytest.raises(ValueError, match=message):
        flag_aggregate(torch.randn(4, 10, device=device), **kwargs)


def test_registry_wrapper_defaults_to_a_training_scale(device):
    grads = make_grads(0, n=8).to(device)
    out = flag(grads, f=2)
    assert out.norm().item() == pytest.approx(grads.norm(dim=1).median().item())
