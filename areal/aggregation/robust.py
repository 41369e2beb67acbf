"""Baseline gradient aggregators, ALGORITHMS.md §5: mean, coordinate median,
trimmed mean, Krum / Multi-Krum (Blanchard et al. 2017), Bulyan (El Mhamdi et
al. 2018) and the geometric median (Weiszfeld).

Each maps grads [n, d] and the declared Byzantine count f to one [d] vector,
and checks its n/f precondition first. Inputs must be finite; the learner
group screens non-finite rows before aggregating.
"""

from __future__ import annotations

import torch


def check_grads(grads: torch.Tensor, f: int, name: str, min_n: int | None = None, rule: str = "") -> None:
    """Shape and n/f checks shared by every aggregator; errors name the aggregator and the rule."""
    if grads.dim() != 2 or grads.shape[0] < 1:
        raise ValueError(f"{name}: grads must be [n_workers, d] with n >= 1, got shape {tuple(grads.shape)}")
    if not isinstance(f, int) or f < 0:
        raise ValueError(f"{name}: f (declared Byzantine workers) must be an int >= 0, got {f!r}")
    if min_n is not None and grads.shape[0] < min_n:
        raise ValueError(
            f"{name}: needs {rule} (n={grads.shape[0]}, f={f}); lower learner.aggregator_f or add learners"
        )


def mean(grads: torch.Tensor, f: int = 0) -> torch.Tensor:
    """Arithmetic mean; f is ignored (no robustness)."""
    check_grads(grads, f, "mean")
    return grads.mean(dim=0)


def coordinate_median(grads: torch.Tensor, f: int = 0) -> torch.Tensor:
    """Per-coordinate median; for even n the lower middle value (as torch.median). Needs n >= 2f + 1."""
    n = grads.shape[0]
    check_grads(grads, f, "coordinate_median", 2 * f + 1, "n >= 2f + 1")
    return grads.median(dim=0).values if n > 1 else grads[0].clone()


def trimmed_mean(grads: torch.Tensor, f: int = 0) -> torch.Tensor:
    """Per-coordinate mean after dropping the f largest and f smallest values. Needs n >= 2f + 1."""
    n = grads.shape[0]
    check_grads(grads, f, "trimmed_mean", 2 * f + 1, "n >= 2f + 1")
    if f == 0:
        return grads.mean(dim=0)
    return grads.sort(dim=0).values[f : n - f].mean(dim=0)


def pairwise_sq_distances(grads: torch.Tensor) -> torch.Tensor:
    """||g_i - g_j||^2 [n, n] via the Gram matrix: O(n^2 d) time, O(n^2) extra memory."""
    return sq_distances_from_gram((grads @ grads.T).double())


def sq_distances_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """||g_i - g_j||^2 = G_ii + G_jj - 2 G_ij, clamped at 0 against rounding."""
    sq = gram.diagonal()
    dist = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0)
    dist.fill_diagonal_(0.0)
    return dist


def krum_scores(dist: torch.Tensor, f: int) -> torch.Tensor:
    """score_i = sum of the n - f - 1 smallest ||g_i - g_j||^2 over j != i, from a distance matrix."""
    n = dist.shape[0]
    k = max(n - f - 1, 0)
    others = dist + torch.diag(torch.full((n,), float("inf"), dtype=dist.dtype, device=dist.device))
    return others.sort(dim=1).values[:, :k].sum(dim=1)


def krum(grads: torch.Tensor, f: int = 0) -> torch.Tensor:
    """The gradient with the lowest Krum score (ALGORITHMS.md §5). Needs n >= 2f + 3."""
    check_grads(grads, f, "krum", 2 * f + 3, "n >= 2f + 3")
    scores = krum_scores(pairwise_sq_distances(grads), f)
    return grads[int(torch.argmin(scores))].clone()


def multi_krum(grads: torch.Tensor, f: int = 0) -> torch.Tensor:
    """Mean of the n - f - 2 gradients with the lowest Krum scores. Needs n >= 2f + 3."""
    n = grads.shape[0]
    check_grads(grads, f, "multi_krum", 2 * f + 3, "n >= 2f + 3")
    scores = krum_scores(pairwise_sq_distances(grads), f)
    chosen = torch.argsort(scores, stable=True)[: n - f - 2]
    return grads[chosen].mean(dim=0)


def bulyan(grads: torch.Tensor, f: int = 0) -> torch.Tensor:
    """Bulyan: pick theta = n - 2f gradients one by one by Krum on the rest, then per
    coordinate average the beta = theta - 2f values closest to the median. Needs n >= 4f + 3.
    """
    check_grads(grads, f, "bulyan", 4 * f + 3, "n >= 4f + 3")
    return bulyan_coordinates(grads[bulyan_selection(pairwise_sq_distances(grads), f)], f)


def bulyan_selection(dist: torch.Tensor, f: int) -> list[int]:
    """Bulyan's first phase: theta = n - 2f indices, each the Krum choice among those not yet picked."""
    remaining = list(range(dist.shape[0]))
    chosen = []
    for _ in range(dist.shape[0] - 2 * f):
        sub = dist[remaining][:, remaining]
        pick = remaining[int(torch.argmin(krum_scores(sub, f)))]
        chosen.append(pick)
        remaining.remove(pick)
    return chosen


def bulyan_coordinates(selected: torch.Tensor, f: int) -> torch.Tensor:
    """Bulyan's second phase on the theta selected rows: per coordinate, the mean of the
    beta = theta - 2f values closest to the median."""
    beta = selected.shape[0] - 2 * f
    med = selected.median(dim=0).values
    closest = (selected - med).abs().argsort(dim=0, stable=True)[:beta]
    return selected.gather(0, closest).mean(dim=0)


def geometric_median(
    grads: torch.Tensor, f: int = 0, max_iter: int = 100, tol: float = 1e-7, eps: float = 1e-8
) -> torch.Tensor:
    """argmin_z sum_i ||g_i - z|| by Weiszfeld's iteration z <- sum_i w_i g_i / sum_i w_i,
    w_i = 1 / max(||g_i - z||, eps), from the mean until the relative step is below tol.
    Needs n >= 2f + 1 (breakdown point 1/2).
    """
    check_grads(grads, f, "geometric_median", 2 * f + 1, "n >= 2f + 1")
    z = grads.mean(dim=0)
    for _ in range(max_iter):
        w = 1.0 / torch.linalg.vector_norm(grads - z, dim=1).clamp_min(eps)
        z_next = (w.to(grads.dtype) @ grads) / w.sum()
        moved = torch.linalg.vector_norm(z_next - z)
        z = z_next
        if moved <= tol * torch.linalg.vector_norm(z).clamp_min(eps):
            break
    return z


# -- the same rules from the Gram matrix alone (for aggregation over buckets) --------------------
# Each returns coefficients c [n] (float64, on the Gram matrix's device) with aggregate = g^T c, so a
# rank can apply the rule to one bucket of coordinates at a time after accumulating G = g g^T over all
# buckets.


def mean_coefficients(gram: torch.Tensor, f: int = 0) -> torch.Tensor:
    """c_i = 1/n."""
    return torch.full((gram.shape[0],), 1.0 / gram.shape[0], dtype=torch.float64, device=gram.device)


def krum_coefficients(gram: torch.Tensor, f: int = 0) -> torch.Tensor:
    """One-hot on the lowest Krum score (as ``krum``)."""
    scores = krum_scores(sq_distances_from_gram(gram.double()), f)
    coef = torch.zeros(gram.shape[0], dtype=torch.float64, device=gram.device)
    coef[int(torch.argmin(scores))] = 1.0
    return coef


def multi_krum_coefficients(gram: torch.Tensor, f: int = 0) -> torch.Tensor:
    """1/(n - f - 2) on the n - f - 2 lowest Krum scores (as ``multi_krum``)."""
    n = gram.shape[0]
    scores = krum_scores(sq_distances_from_gram(gram.double()), f)
    coef = torch.zeros(n, dtype=torch.float64, device=gram.device)
    coef[torch.argsort(scores, stable=True)[: n - f - 2]] = 1.0 / (n - f - 2)
    return coef


def geometric_median_coefficients(
    gram: torch.Tensor, f: int = 0, max_iter: int = 100, tol: float = 1e-7, eps: float = 1e-8
) -> torch.Tensor:
    """Weiszfeld's iteration (as ``geometric_median``) on the coefficients of z = g^T c:
    ||g_i - z||^2 = G_ii - 2 (G c)_i + c^T G c, so no d-dimensional vector is formed."""
    gram = gram.double()
    n = gram.shape[0]
    coef = torch.full((n,), 1.0 / n, dtype=torch.float64, device=gram.device)
    for _ in range(max_iter):
        gc = gram @ coef
        dist = (gram.diagonal() - 2 * gc + coef @ gc).clamp_min(0).sqrt()
        w = 1.0 / dist.clamp_min(eps)
        step = w / w.sum() - coef
        coef = coef + step
        moved = (step @ gram @ step).clamp_min(0).sqrt()
        if moved <= tol * (coef @ gram @ coef).clamp_min(0).sqrt().clamp_min(eps):
            break
    return coef
