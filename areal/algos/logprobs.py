"""Token log-probabilities from hidden states without holding [tokens, vocab] logits beyond one chunk.

For a 151,936-token vocabulary the float32 logits of a training batch dwarf the
model (64 x 1,791 tokens: 65 GiB). The LM head and the log-softmax therefore run
over ``chunk_tokens`` positions at a time; under autograd each chunk is
checkpointed, so its logits are freed after the forward and recomputed, one
chunk at a time, in the backward pass. Values and gradients equal the full-logits
computation up to float rounding.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

ENTROPY_ROWS = 128  # rows of a chunk whose softmax exists at once when the entropy is only measured


def _chunk_logprobs(hidden: torch.Tensor, targets: torch.Tensor, head: Callable, temperature: float) -> torch.Tensor:
    """log softmax(head(h) / T)[target] for one chunk, in float32 whatever the model's dtype."""
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _chunk_logprobs_entropy(hidden: torch.Tensor, targets: torch.Tensor, head: Callable, temperature: float,
                            entropy_grad: bool, measured: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs, entropies) of one chunk: H = logsumexp(z) - sum_v softmax(z)_v z_v, from the same logits;
    without ``entropy_grad`` the entropy is a detached measurement (no backward work). ``measured``: a list
    the first call marks; a later call (the checkpoint's recomputation) returns zeros instead."""
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    # gather before logsumexp, as in _chunk_logprobs: autograd runs the later node's backward first, and in this
    # order the gradient of the logsumexp is summed into the gather's (measured: one [chunk, vocab] less at peak)
    picked = logits.gather(-1, targets[:, None]).squeeze(-1)
    lse = torch.logsumexp(logits, dim=-1)
    logprobs = picked - lse
    if entropy_grad:
        return logprobs, lse - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)
    if measured is not None:
        if measured:
            return logprobs, torch.zeros_like(lse).detach()
        measured.append(True)
    with torch.no_grad():  # a measurement: a few rows at a time, so it adds little to the chunk's logits
        parts = [lse_part - (torch.softmax(part, dim=-1) * part).sum(dim=-1)
                 for part, lse_part in zip(logits.detach().split(ENTROPY_ROWS), lse.detach().split(ENTROPY_ROWS))]
    return logprobs, torch.cat(parts) if parts else lse.detach()


def chunked_logprobs_entropy(hidden: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor],
                             targets: torch.Tensor, temperature: float = 1.0, chunk_tokens: int = 1024,
                             entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``chunked_token_logprobs`` and the policy's entropy at each position, H_i = -sum_v p_iv log p_iv over the
    whole vocabulary at temperature T (ALGORITHMS.md §6), from the same chunk of logits: nothing beyond one
    chunk of [tokens, vocab] exists at once. ``entropy_grad``: the entropy carries a gradient (an entropy
    bonus in the loss); otherwise it is only measured, once: the backward pass's recomputation of a chunk
    skips it (it saves nothing for the gradient, so the recomputation needs none of it)."""
    _check(hidden, targets, chunk_tokens, temperature)
    recompute = torch.is_grad_enabled() and chunk_tokens > 0
    step = chunk_tokens or max(len(hidden), 1)
    parts = []
    for h, t in zip(hidden.split(step), targets.split(step)):
        if recompute:
            measured = [] if not entropy_grad else None  # set once the forward has measured this chunk
            parts.append(checkpoint(_chunk_logprobs_entropy, h, t, head, temperature, entropy_grad, measured,
                                    use_reentrant=False))
        else:
            parts.append(_chunk_logprobs_entropy(h, t, head, temperature, entropy_grad))
    if not parts:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _check(hidden: torch.Tensor, targets: torch.Tensor, chunk_tokens: int, temperature: float) -> None:
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"chunked_token_logprobs: need hidden [n, H] and targets [n], got {tuple(hidden.shape)} "
                         f"and {tuple(targets.shape)}")
    if chunk_tokens < 0:
        raise ValueError(f"chunked_token_logprobs: chunk_tokens must be >= 0 (0 = one chunk), got {chunk_tokens}")
    if not temperature > 0:
        raise ValueError(f"chunked_token_logprobs: temperature must be > 0, got {temperature}")


def chunked_token_logprobs(hidden: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor,
                           temperature: float = 1.0, chunk_tokens: int = 1024) -> torch.Tensor:
    """log pi(target_i | h_i) = z_i[target_i] - logsumexp_v z_iv with z_i = head(h_i) / T, for hidden [n, H]
    and targets [n]; returns float32 [n].

    ``head`` is the model's output layer (a module, so parameter hooks such as ZeRO-3's
    gather fire on every recomputation). At most ``chunk_tokens`` rows of logits exist at
    once, in the forward pass and (recomputed) in the backward pass; ``chunk_tokens=0``
    computes all rows in one chunk and keeps them for backward (no recomputation).
    """
    _check(hidden, targets, chunk_tokens, temperature)
    if chunk_tokens == 0:
        return _chunk_logprobs(hidden, targets, head, temperature)
    recompute = torch.is_grad_enabled()
    parts = []
    # split, not slicing: its backward concatenates the chunks' gradients once instead of adding n-sized zeros
    for h, t in zip(hidden.split(chunk_tokens), targets.split(chunk_tokens)):
        if recompute:
            parts.append(checkpoint(_chunk_logprobs, h, t, head, temperature, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(h, t, head, temperature))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
