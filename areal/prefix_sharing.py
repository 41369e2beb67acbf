"""Shared-prefix micro-batches: a group's samples share their prompt, so compute it once.

GRPO-family batches hold n completions of every prompt. Packed one sequence after another,
the prompt's tokens go through the model n times with identical results (causal attention:
a position's hidden state depends only on the tokens before it). Here the rows that share a
prefix become one *family* row: the shared prefix once, then each row's own remainder, with a
4D attention mask in which a remainder sees the prefix and itself but no other remainder, and
position ids that continue the prefix's in every remainder. Every scored token gets the same
log-probability, and (summing over the family) the same gradient, as in its own row; the
forward computes ``prefix + sum(remainders)`` positions instead of ``n * prefix + sum(remainders)``.
On the CPU demo (7-token prompts, ~5-token answers, 8 samples) that is 2.3x fewer positions.

Families are found from the token ids alone (no grouping metadata): in batch order, a row
joins the open family when it shares at least half of the family's common prefix (a family
of one: at least one token); the family's prefix is then the members' longest common prefix.
Rows of one group come together and share their whole prompt, so each group becomes a family,
and rows of different prompts rarely share half of one.

Families are packed into rows as wide as the widest family, several per row when they fit
(attention stays inside each). The mask costs a row's length squared (dense attention), so a
family stops growing at ``row_tokens``; masks are boolean for SDPA and additive for eager.
"""

from __future__ import annotations

from typing import Sequence

import torch

from areal.packing import MicroBatch, first_fit_decreasing, sequence_lengths

SHARED, PAD = -1, -2  # segment ids of the shared prefix and of padding


def common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """Length of the longest common prefix of two 1-D token tensors."""
    n = min(len(a), len(b))
    differ = torch.nonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


def families(input_ids: torch.Tensor, rows: Sequence[int], lengths: Sequence[int],
             row_tokens: int) -> list[tuple[list[int], int]]:
    """(member rows, shared prefix length) of each family, members in batch order (see the module docstring)."""
    out: list[tuple[list[int], int]] = []
    for r in rows:
        seq = input_ids[r, :lengths[r]]
        if out:
            members, shared = out[-1]
            overlap = common_prefix(input_ids[members[0], :shared], seq)
            width = overlap + sum(lengths[m] - overlap for m in members) + lengths[r] - overlap
            # a lone row takes any overlap (its "prefix" is its whole sequence); a family needs half its prefix
            needed = 1 if len(members) == 1 else max(1, (shared + 1) // 2)
            if overlap >= needed and width <= row_tokens:
                members.append(r)
                out[-1] = (members, overlap)
                continue
        out.append(([r], lengths[r]))
    return out


def _family_row(input_ids: torch.Tensor, scored: torch.Tensor, members: list[int], shared: int,
                lengths: Sequence[int]):
    """One family laid out: (ids, positions, segment ids, [(member, columns, predictor offsets)])."""
    first = members[0]
    ids, positions, segments = [input_ids[first, :shared]], [torch.arange(shared)], [torch.full((shared,), SHARED)]
    offset, scored_parts = shared, []
    for j, r in enumerate(members):
        n = lengths[r]
        ids.append(input_ids[r, shared:n])
        positions.append(torch.arange(shared, n))
        segments.append(torch.full((n - shared,), j))
        cols = torch.nonzero(scored[r, 1:n]).flatten() + 1
        # token c is predicted at column c-1: in the shared prefix while c-1 < shared, else in r's own remainder
        before = cols - 1
        where = torch.where(before < shared, before, offset + before - shared)
        scored_parts.append((r, cols, where))
        offset += n - shared
    return torch.cat(ids), torch.cat(positions), torch.cat(segments), scored_parts


def _attention_mask(families: torch.Tensor, members: torch.Tensor, additive: bool, dtype: torch.dtype):
    """[rows, 1, W, W] from each position's family and member ids: causal, within one family, and a member's
    remainder sees the shared prefix and itself only; padding sees itself (a query with no key gives NaN)."""
    width = families.shape[1]
    same_family = families[:, :, None] == families[:, None, :]
    visible = (members[:, None, :] == SHARED) | (members[:, None, :] == members[:, :, None])
    pad = (members == PAD)[:, :, None]
    allowed = torch.ones(width, width, dtype=torch.bool).tril() & same_family & visible & ~pad
    allowed |= torch.eye(width, dtype=torch.bool) & pad
    allowed = allowed[:, None]
    if not additive:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


def _forward(input_ids: torch.Tensor, scored: torch.Tensor, lines: list[list[tuple[list[int], int]]],
             lengths: Sequence[int], additive: bool, dtype: torch.dtype) -> MicroBatch:
    """One forward: each of ``lines`` is a row of families, one after another (positions restart per family)."""
    laid = [[_family_row(input_ids, scored, members, shared, lengths) for members, shared in line] for line in lines]
    width = max(sum(len(fam[0]) for fam in line) for line in laid)
    ids = torch.zeros(len(laid), width, dtype=input_ids.dtype)
    positions = torch.zeros(len(laid), width, dtype=torch.long)
    family_ids = torch.full((len(laid), width), -1, dtype=torch.long)
    member_ids = torch.full((len(laid), width), PAD, dtype=torch.long)
    rows, predictors, targets, srow, scol = [], [], [], [], []
    tokens, family = 0, 0
    for i, line in enumerate(laid):
        offset = 0
        for row_ids, row_pos, row_members, parts in line:
            n = len(row_ids)
            span = slice(offset, offset + n)
            ids[i, span], positions[i, span], member_ids[i, span] = row_ids, row_pos, row_members
            family_ids[i, span] = family
            for r, cols, where in parts:
                predictors.append(i * width + offset + where)
                targets.append(input_ids[r, cols])
                srow.append(torch.full_like(cols, len(rows)))
                scol.append(cols)
                rows.append(r)
            offset, family = offset + n, family + 1
        positions[i, offset:] = torch.arange(width - offset)
        tokens += offset
    mask = _attention_mask(family_ids, member_ids, additive, dtype)
    return MicroBatch(torch.tensor(rows), ids, positions, mask, torch.cat(predictors), torch.cat(targets),
                      torch.cat(srow), torch.cat(scol), tokens)


def shared_prefix_micro_batches(input_ids: torch.Tensor, attention_mask: torch.Tensor, scored: torch.Tensor,
                                rows: Sequence[int], max_tokens: int, row_tokens: int, additive: bool = False,
                                dtype: torch.dtype = torch.float32) -> list[MicroBatch]:
    """Batch ``rows`` (right-padded [B, T]) as family rows of at most ``row_tokens`` positions (a longer single
    sequence gets its own), widest first, as many per forward as ``max_tokens`` holds. ``additive``: a float
    mask (0 / most negative of ``dtype``) for eager attention instead of SDPA's boolean one."""
    rows = [int(r) for r in rows]
    lengths = sequence_lengths(attention_mask)
    input_ids, scored = input_ids.cpu(), scored.bool().cpu()
    fams = families(input_ids, rows, lengths, row_tokens)
    widths = [shared + sum(lengths[m] - shared for m in members) for members, shared in fams]
    # families packed into rows as wide as the widest one (attention costs a row's length squared), rows into
    # forwards of at most max_tokens positions, as areal.packing does with whole sequences
    lines = [[fams[i] for i in line] for line in first_fit_decreasing(widths, max(widths))]
    per_forward = max(1, max_tokens // max(widths))
    return [_forward(input_ids, scored, lines[i:i + per_forward], lengths, additive, dtype)
            for i in range(0, len(lines), per_forward)]
