"""Byzantine attack simulators for tests and benchmarks (ALGORITHMS.md §5).

``apply_attack(name, grads, byzantine)`` returns a copy of grads [n, d] whose
rows listed in ``byzantine`` are replaced by what an attacker sends.
Attacks that need population statistics ("a little is enough", "fall of
empires") compute them from the rows the attackers know: by default their own
honest gradients only; with ``omniscient=True`` every worker's honest gradient,
the stronger threat model those papers evaluate (and the only meaningful one
with a single attacker, whose own rows have no spread). Randomness comes only
from the given generator, on the generator's device (a CPU generator, the default, gives the same
attack whatever device the gradients are on); the result is on the gradients' device.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

AttackFn = Callable[..., torch.Tensor]  # (own [k, d], generator, known [j, d]) -> sent [k, d]


def _std(rows: torch.Tensor) -> torch.Tensor:
    """Per-coordinate std with Bessel's correction; 0 for a single row (nothing to spread)."""
    return rows.std(dim=0) if rows.shape[0] > 1 else torch.zeros_like(rows[0])


def _draw(sampler, own: torch.Tensor, gen: torch.Generator, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``sampler`` (torch.rand / torch.randn) of own's shape drawn on the generator's device, moved to own's."""
    return sampler(own.shape, generator=gen, dtype=dtype or own.dtype, device=gen.device).to(own.device)


def random_uniform(own: torch.Tensor, gen: torch.Generator, known: torch.Tensor) -> torch.Tensor:
    """Each attacker sends U[0, 1)^d."""
    return _draw(torch.rand, own, gen)


def reverse(own: torch.Tensor, gen: torch.Generator, known: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    """Each attacker sends -10 x its own gradient."""
    return -scale * own


def sign_flip(own: torch.Tensor, gen: torch.Generator, known: torch.Tensor) -> torch.Tensor:
    """Each attacker sends its own gradient negated."""
    return -own


def little_is_enough(own: torch.Tensor, gen: torch.Generator, known: torch.Tensor, z: float = 0.21) -> torch.Tensor:
    """"A little is enough" (Baruch et al. 2019): all send mean - z std of the known gradients."""
    return (known.mean(dim=0) - z * _std(known)).expand_as(own).clone()


def fall_of_empires(own: torch.Tensor, gen: torch.Generator, known: torch.Tensor, scale: float = 0.1) -> torch.Tensor:
    """"Fall of empires" (Xie et al. 2020): all send -0.1 x the mean of the known gradients."""
    return (-scale * known.mean(dim=0)).expand_as(own).clone()


def gaussian_noise(own: torch.Tensor, gen: torch.Generator, known: torch.Tensor, std: float = 100.0) -> torch.Tensor:
    """Each attacker sends N(0, std^2 I) noise."""
    return std * _draw(torch.randn, own, gen)


def dropped_coordinates(own: torch.Tensor, gen: torch.Generator, known: torch.Tensor,
                        fraction: float = 0.5) -> torch.Tensor:
    """Each attacker sends its own gradient with a random ``fraction`` of coordinates zeroed."""
    keep = _draw(torch.rand, own, gen, torch.float32) >= fraction
    return own * keep.to(own.dtype)


ATTACKS: dict[str, AttackFn] = {
    "random": random_uniform,
    "reverse": reverse,
    "sign_flip": sign_flip,
    "little_is_enough": little_is_enough,
    "fall_of_empires": fall_of_empires,
    "gaussian": gaussian_noise,
    "dropped_coordinates": dropped_coordinates,
}


def apply_attack(
    name: str,
    grads: torch.Tensor,
    byzantine: Sequence[int],
    generator: torch.Generator | None = None,
    omniscient: bool = False,
    **params,
) -> torch.Tensor:
    """Copy of grads [n, d] with the ``byzantine`` rows replaced by attack ``name``."""
    if name not in ATTACKS:
        raise ValueError(f"learner.byzantine.attack: unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    n = grads.shape[0]
    idx = sorted(set(int(i) for i in byzantine))
    if any(not 0 <= i < n for i in idx):
        raise ValueError(f"learner.byzantine.ranks: ranks {idx} out of range for {n} workers")
    out = grads.clone()
    if not idx:
        return out
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    own = grads[idx].to(gen.device)  # the attack runs where its randomness comes from
    sent = ATTACKS[name](own, gen, grads.to(gen.device) if omniscient else own, **params)
    out[idx] = sent.to(device=grads.device, dtype=grads.dtype)
    return out
