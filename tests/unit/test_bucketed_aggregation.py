"""Aggregation streamed over buckets equals the dense rule on the full [n, d] matrix.

Every rank's gradient lives on ``device`` (cuda when present), as a learner's does."""

import pytest
import torch

from areal.aggregation import AGGREGATORS, apply_attack, flag_aggregate
from areal.aggregation.bucketed import RULES, BucketedAggregator, ByzantineSimulation, check_rule


def honest_grads(device, n=7, d=50, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)  # drawn on the host: the same gradients on every device
    common = torch.randn(d, generator=gen, dtype=dtype)
    return (common + 0.5 * torch.randn(n, d, generator=gen, dtype=dtype)).to(device)


def run_as_ranks(agg: BucketedAggregator, grads: torch.Tensor, step: int = 0) -> list[torch.Tensor]:
    """Every rank's result, with a gather that stacks what each rank holds (the in-process transport)."""
    results = []
    for rank in range(grads.shape[0]):
        calls = iter(range(10**6))
        chunks: dict[int, list[torch.Tensor]] = {}

        def gather(local, rank=rank, calls=calls, chunks=chunks):
            # replay the k-th gather call on every rank's copy of the data
            k = next(calls)
            if k not in chunks:
                chunks[k] = _peer_chunks(agg, grads, k)
            assert torch.equal(chunks[k][rank].nan_to_num(), local.reshape(-1).nan_to_num())
            return torch.stack(chunks[k])

        results.append(agg(grads[rank], gather, step))
    assert all(r.device == grads.device and r.dtype == grads.dtype for r in results)
    return results


def _peer_chunks(agg, grads, call):
    """What every rank passes to its ``call``-th gather: the finiteness flag, then buckets in order."""
    if call == 0:
        return [torch.isfinite(g).all().to(g.dtype).reshape(1) for g in grads]
    buckets = [g.split(agg.bucket_numel) for g in grads]
    nb = len(buckets[0])
    single_pass = agg.name in ("mean", "coordinate_median", "trimmed_mean")
    k = (call - 1) if single_pass else (call - 1) % nb
    return [b[k] for b in buckets]


@pytest.mark.parametrize("name", [r for r in RULES if r != "flag"])
@pytest.mark.parametrize("bucket", [7, 50, 1000])
def test_every_rule_matches_the_dense_aggregator_for_any_bucket_size(name, bucket, device):
    grads = honest_grads(device)
    agg = BucketedAggregator(name, n=7, f=1, bucket_numel=bucket)
    expected = AGGREGATORS[name](grads, 1)
    for got in run_as_ranks(agg, grads):
        assert torch.allclose(got, expected, atol=1e-9), name


@pytest.mark.parametrize("bucket", [3, 50])
@pytest.mark.parametrize("params", [{}, {"m": 2, "lam": 0.5, "iters": 3}, {"m": 1, "rescale": None}])
def test_flag_equals_flag_aggregate_started_from_the_principal_directions(bucket, params, device):
    grads = honest_grads(device)
    agg = BucketedAggregator("flag", n=7, f=1, params=params, bucket_numel=bucket)
    m = params.get("m") or 3
    x = grads / grads.norm(dim=1, keepdim=True)
    start = torch.linalg.svd(x.T, full_matrices=False).U[:, :m]
    expected = flag_aggregate(grads, m, params.get("lam", 0.0), params.get("iters", 1), init=start,
                              rescale=params.get("rescale", "median_norm"))
    for got in run_as_ranks(agg, grads):
        assert torch.allclose(got, expected, atol=1e-8)


@pytest.mark.parametrize("name", ["flag", "krum", "multi_krum", "geometric_median"])
def test_span_coefficients_are_solved_on_the_gram_matrix_device(name, device):
    grads = honest_grads(device)
    gram = grads @ grads.T
    agg = BucketedAggregator(name, n=7, f=1)
    on_device = agg._coefficients(gram, torch.float64)
    assert on_device.device == gram.device and on_device.dtype == torch.float64
    assert torch.allclose(on_device.cpu(), agg._coefficients(gram.cpu(), torch.float64), atol=1e-9)
    if name != "flag":  # flag's start differs from the dense aggregator's (see the test above)
        assert torch.allclose(on_device @ grads, AGGREGATORS[name](grads, 1), atol=1e-9)


def test_every_rank_gets_bitwise_the_same_result(device):
    grads = honest_grads(device, dtype=torch.float32)
    for name in RULES:
        results = run_as_ranks(BucketedAggregator(name, n=7, f=1, bucket_numel=16), grads)
        assert all(torch.equal(r, results[0]) for r in results), name


def test_simulated_attackers_send_the_same_vector_in_both_passes(device):
    grads = honest_grads(device)
    sim = ByzantineSimulation(ranks=(0, 3), attack="gaussian", seed=5)
    agg = BucketedAggregator("multi_krum", n=7, f=2, bucket_numel=20, byzantine=sim)
    got = run_as_ranks(agg, grads, step=11)[0]
    # rebuild what the attackers sent bucket by bucket, then aggregate densely
    sent = torch.cat([agg._attacked(torch.stack([g.split(20)[k] for g in grads]), list(range(7)), k, 11)
                      for k in range(3)], dim=1)
    assert not torch.allclose(sent[0], grads[0])
    assert torch.allclose(got, AGGREGATORS["multi_krum"](sent, 2), atol=1e-9)


def test_an_omniscient_little_is_enough_attacker_uses_every_workers_gradient(device):
    grads = honest_grads(device)
    sent = apply_attack("little_is_enough", grads, [2], omniscient=True)[2]
    assert torch.allclose(sent, grads.mean(0) - 0.21 * grads.std(0))
    alone = apply_attack("little_is_enough", grads, [2])[2]  # one attacker alone has no spread to use
    assert torch.allclose(alone, grads[2])


def test_a_reversed_rank_drags_the_mean_but_not_flag(device):
    grads = honest_grads(device, n=5)
    honest = grads.mean(0)
    sim = ByzantineSimulation(ranks=(4,), attack="reverse")
    cos = torch.nn.functional.cosine_similarity
    bad_mean = run_as_ranks(BucketedAggregator("mean", n=5, byzantine=sim), grads)[0]
    robust = run_as_ranks(BucketedAggregator("flag", n=5, f=1, byzantine=sim), grads)[0]
    assert cos(bad_mean, honest, dim=0) < 0
    assert cos(robust, honest, dim=0) > 0.9


def test_a_rank_with_a_non_finite_gradient_is_left_out(device):
    grads = honest_grads(device)
    grads[5, 3] = float("nan")
    agg = BucketedAggregator("trimmed_mean", n=7, f=1, bucket_numel=10)
    got = run_as_ranks(agg, grads)[0]
    keep = [0, 1, 2, 3, 4, 6]
    assert torch.allclose(got, AGGREGATORS["trimmed_mean"](grads[keep], 1))
    assert agg.last_info["dropped_ranks"] == 1.0


def test_too_few_workers_names_the_keys_that_fix_it():
    with pytest.raises(ValueError, match=r"learner.aggregator=bulyan needs n >= 4f \+ 3.*learner.aggregator_f"):
        check_rule("bulyan", 5, 1)
    with pytest.raises(ValueError, match="unknown aggregator"):
        check_rule("median", 5, 1)
    with pytest.raises(ValueError, match="learner.byzantine.attack"):
        ByzantineSimulation(ranks=(0,), attack="nope")
    with pytest.raises(ValueError, match="learner.byzantine.ranks"):
        BucketedAggregator("mean", n=3, byzantine=ByzantineSimulation(ranks=(3,), attack="reverse"))
