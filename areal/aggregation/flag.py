"""Flag Aggregator (Almasi et al., "Flag Aggregator: Scalable Distributed Training
under Failures and Augmented Losses using Convex Optimization"); ALGORITHMS.md §5.

The p normalised gradients x_i are summarised by an m-dimensional subspace Y
that minimises E(Y) = sum_i sqrt(1 - ||Y^T x_i||^2) (a robust, L1-like fit:
a few vectors far from the subspace cannot pull it much); the output is
(1/m) Y Y^T sum_i x_i. E is minimised by iteratively reweighted least squares.

Everything after the first pass over the data happens in the p-dimensional
span of the x_i: with the Gram matrix G = X^T X = V S V^T, the x_i have
coordinates R = S^{1/2} V^T in the orthonormal basis Q = X V S^{-1/2}, and the
IRLS matrix [w_i x_i, w_ij u_ij] is X W = Q (R W), so its left singular
vectors are Q times the eigenvectors of the r x r matrix R (W W^T) R^T.
W W^T is a diagonal plus a weighted graph Laplacian, built in O(p^2 m).
Cost: O(d p^2) for G, O(d p m) for the start, O(d p) for the output; memory
O(d m) beyond the input. No d x d (or d x p^2) matrix is formed.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch

from areal.aggregation.robust import check_grads

Rescale = Literal["median_norm"] | None
_IRLS_EPS = 1e-7


def flag_default_init(d: int, m: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The reference start: seed 1, Q of QR(rand(d, m) - 0.5), as a d x m orthonormal matrix."""
    gen = torch.Generator().manual_seed(1)
    y0 = torch.linalg.qr(torch.rand(d, m, generator=gen) - 0.5).Q
    return y0.to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=2)
def _cached_default_init(d: int, m: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Training calls Flag every step with the same (d, m): build the seeded start once."""
    return flag_default_init(d, m, dtype, device)


def flag_objective(proj: torch.Tensor) -> torch.Tensor:
    """E(Y) = sum_i sqrt(max(0, 1 - ||Y^T x_i||^2)) from proj = Y^T X [m, p]."""
    return (1.0 - (proj**2).sum(dim=0)).clamp_min(0).sqrt().sum()


def _irls_gram(proj: torch.Tensor, lam: float) -> torch.Tensor:
    """K = W W^T [p, p] for the IRLS matrix W whose columns are w_i e_i and c_ij (e_i - e_j)."""
    p = proj.shape[1]
    w = ((1.0 - (proj**2).sum(dim=0)).abs() + _IRLS_EPS) ** -0.25
    k = torch.diag(w**2)
    if lam > 0 and p > 1:
        diff_sq = torch.cdist(proj.T, proj.T) ** 2  # ||Y^T (x_i - x_j)||^2
        c = ((1.0 - diff_sq).abs() + _IRLS_EPS) ** -0.25 * (lam / (p * (p - 1)))
        edge = 2.0 * c**2  # both ordered pairs (i, j) and (j, i) carry the same column up to sign
        edge.fill_diagonal_(0.0)
        k = k + torch.diag(edge.sum(dim=1)) - edge
    return k


def _span_coordinates(gram: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """From the Gram matrix of the x_i: R [r, p] (coordinates) and B = V S^{-1/2} [p, r] (Q = X B)."""
    evals, evecs = torch.linalg.eigh(gram)
    keep = evals > evals.max().clamp_min(0) * gram.shape[0] * eps * 10
    s, v = evals[keep], evecs[:, keep]
    return s.sqrt()[:, None] * v.T, v / s.sqrt()[None, :]


def _irls(coords: torch.Tensor, u: torch.Tensor | None, proj: torch.Tensor, m: int, lam: float, iters: int):
    """Up to ``iters`` IRLS steps from Y (span coordinates ``u`` [r, m'], or None for a start outside
    the span) with projections ``proj`` = Y^T X; a step is kept only if it lowers E(Y)."""
    energy = flag_objective(proj)
    for _ in range(iters):
        a = coords @ _irls_gram(proj, lam) @ coords.T
        evals, evecs = torch.linalg.eigh((a + a.T) / 2)
        top = evecs[:, torch.argsort(evals, descending=True)[: min(m, coords.shape[0])]]
        new_proj = top.T @ coords
        new_energy = flag_objective(new_proj)
        if not new_energy < energy:
            break
        u, proj, energy = top, new_proj, new_energy
    return u, proj


def _validate(grads: torch.Tensor, m: int, lam: float, iters: int, init: torch.Tensor | None, rescale) -> None:
    if grads.dim() != 2:
        raise ValueError(f"flag_aggregate: grads must be [n_workers, d], got shape {tuple(grads.shape)}")
    d = grads.shape[1]
    if not 1 <= m <= d:
        raise ValueError(f"flag_aggregate: m (subspace dimension) must be in [1, d={d}], got {m}")
    if lam < 0:
        raise ValueError(f"flag_aggregate: lam must be >= 0, got {lam}")
    if iters < 1:
        raise ValueError(f"flag_aggregate: iters must be >= 1, got {iters}")
    if rescale not in (None, "median_norm"):
        raise ValueError(f"flag_aggregate: rescale must be None or 'median_norm', got {rescale!r}")
    if init is not None:
        if tuple(init.shape) != (d, m):
            raise ValueError(f"flag_aggregate: init must be [d, m] = [{d}, {m}], got {tuple(init.shape)}")
        gram = (init.T @ init).double().cpu()
        if not torch.allclose(gram, torch.eye(m, dtype=torch.float64), atol=1e-4):
            raise ValueError("flag_aggregate: init must have orthonormal columns (init^T init = I)")


def flag_aggregate(
    grads: torch.Tensor,
    m: int,
    lam: float = 0.0,
    iters: int = 1,
    init: torch.Tensor | None = None,
    rescale: Rescale = None,
) -> torch.Tensor:
    """Aggregate [n, d] gradients into [d] by the Flag subspace estimate (ALGORITHMS.md §5).

    Steps: x_i = g_i / ||g_i||; start from ``init`` (d x m, orthonormal) or the
    seeded reference start; up to ``iters`` IRLS steps with weights
    w_i = (|1 - ||Y^T x_i||^2| + 1e-7)^(-1/4) and, if lam > 0, pairwise columns
    (|1 - ||Y^T u_ij||^2| + 1e-7)^(-1/4) lam / (p (p - 1)) u_ij, u_ij = x_i - x_j;
    a step is kept only if it lowers E(Y) (without the pairwise term); output
    (1/m) Y Y^T sum_i x_i.

    The raw output's norm is about (#agreeing workers) / m, not a gradient's.
    ``rescale="median_norm"`` scales it to the median input norm for use as a
    training gradient. Rows that are all zero carry no direction and are left
    out (a worker that sent nothing); all-zero input gives a zero vector.
    """
    _validate(grads, m, lam, iters, init, rescale)
    n, d = grads.shape
    gram_raw = (grads @ grads.T).double()  # the one O(d n^2) pass; norms come from its diagonal
    norms = gram_raw.diagonal().clamp_min(0).sqrt()
    live = norms > 0
    if not bool(live.any()):
        return torch.zeros(d, dtype=grads.dtype, device=grads.device)
    inv = 1.0 / norms[live]
    gram = gram_raw[live][:, live] * inv[:, None] * inv[None, :]
    coords, basis = _span_coordinates(gram, torch.finfo(grads.dtype).eps)

    y0 = init.to(dtype=grads.dtype, device=grads.device) if init is not None else _cached_default_init(
        d, m, grads.dtype, grads.device
    )
    proj = (y0.T @ grads.T).double()[:, live] * inv[None, :]  # [m, p] = Y0^T X
    u, proj = _irls(coords, None, proj, m, lam, iters)  # u None: Y is still Y0

    summed = proj.sum(dim=1)  # Y^T sum_i x_i  [m']
    if u is None:
        out = (y0 @ summed.to(grads.dtype)) / m
    else:
        # out = X B u summed / m with X = g^T diag(inv); rows that were left out get coefficient 0
        coef = torch.zeros(n, dtype=torch.float64, device=grads.device)
        coef[live] = (basis @ (u @ summed)) * inv / m
        out = grads.T @ coef.to(grads.dtype)
    if rescale == "median_norm":
        out_norm = torch.linalg.vector_norm(out.double())
        if out_norm > 0:
            out = out * (norms[live].median() / out_norm).to(out.dtype)
    return out


def flag(
    grads: torch.Tensor,
    f: int = 0,
    m: int | None = None,
    lam: float = 0.0,
    iters: int = 1,
    init: torch.Tensor | None = None,
    rescale: str | None = "median_norm",
) -> torch.Tensor:
    """Flag Aggregator with the registry's signature.

    Defaults suited to training: the output rescaled to the median input norm
    (``rescale=None`` keeps the raw (1/m) Y Y^T sum x_i), and
    ``m = max(1, (n - f) // 2)``: half the honest workers, small enough that a
    minority of attackers cannot each claim a direction of the subspace, large
    enough to follow honest gradients that do not share a single direction.
    """
    check_grads(grads, f, "flag")
    if m is None:
        m = max(1, (grads.shape[0] - f) // 2)
    return flag_aggregate(grads, m, lam=lam, iters=iters, init=init, rescale=rescale)


def flag_coefficients(
    gram: torch.Tensor, m: int, lam: float = 0.0, iters: int = 1, rescale: Rescale = None, eps: float = 1e-7
) -> torch.Tensor:
    """Flag from the raw Gram matrix G = g g^T [n, n] alone: coefficients c [n] with output g^T c.

    For aggregation over buckets (``areal.aggregation.bucketed``), where no rank
    holds the n full gradients. The start is the top-m principal directions of
    the normalised x_i (data-dependent and inside their span, so no d x m random
    matrix is needed); with that start it equals ``flag_aggregate(grads, m, lam,
    iters, init=<those directions>, rescale)``. ``eps`` is the rank cut-off's
    relative precision (the gradients' dtype eps).
    """
    gram = gram.double()
    n = gram.shape[0]
    if m < 1:
        raise ValueError(f"flag_coefficients: m (subspace dimension) must be >= 1, got {m}")
    if rescale not in (None, "median_norm"):
        raise ValueError(f"flag_coefficients: rescale must be None or 'median_norm', got {rescale!r}")
    norms = gram.diagonal().clamp_min(0).sqrt()
    live = norms > 0
    coef = torch.zeros(n, dtype=torch.float64, device=gram.device)
    if not bool(live.any()):
        return coef
    inv = 1.0 / norms[live]
    coords, basis = _span_coordinates(gram[live][:, live] * inv[:, None] * inv[None, :], eps)
    # coords coords^T = diag(S): the principal directions are unit vectors in span coordinates
    start = torch.eye(coords.shape[0], dtype=torch.float64, device=gram.device)[:, torch.argsort(
        (coords**2).sum(dim=1), descending=True)[: min(m, coords.shape[0])]]
    u, proj = _irls(coords, start, start.T @ coords, m, lam, iters)
    coef[live] = (basis @ (u @ proj.sum(dim=1))) * inv / m
    if rescale == "median_norm":
        out_norm = (coef @ gram @ coef).clamp_min(0).sqrt()
        if out_norm > 0:
            coef = coef * (norms[live].median() / out_norm)
    return coef
