"""Token-budget micro-batches for learner passes: which rows share one forward, and how they are laid out.

A learner never runs a whole batch through the model at once: rows are grouped so
that one forward holds at most ``learner.max_tokens_per_mb`` tokens. Two layouts:

* packed (default): the rows of a micro-batch are concatenated into one row with
  no padding; positions restart at 0 for every sequence, which is how Hugging Face
  models recognise packed sequences and keep attention inside each one;
* padded: rows keep their own line, right-padded to the longest of the group.

Only *scored* tokens (the loss mask) get a log-probability: the model's LM head
runs on the positions that predict them, never on prompts or padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of indices whose lengths sum to at most ``capacity``, longest first (FFD, <= 11/9 OPT + 1 bins).

    A length above ``capacity`` gets a bin of its own: a sequence is never split.
    Each bin lists its indices in ascending order; bins come in the order they were opened.
    """
    if capacity < 1:
        raise ValueError(f"first_fit_decreasing: capacity must be >= 1, got {capacity}")
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return [sorted(b) for b in bins]


def padded_groups(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Consecutive indices, each group as long as ``len(group) * max(length in group) <= capacity``."""
    if capacity < 1:
        raise ValueError(f"padded_groups: capacity must be >= 1, got {capacity}")
    groups: list[list[int]] = []
    widest = 0
    for i, length in enumerate(lengths):
        if groups and (len(groups[-1]) + 1) * max(widest, length) <= capacity:
            groups[-1].append(i)
            widest = max(widest, length)
        else:
            groups.append([i])
            widest = length
    return groups


@dataclass(frozen=True)
class MicroBatch:
    """One forward's worth of rows of a [B, T] batch.

    ``input_ids`` is [1, N] when packed (``position_ids`` restart per sequence,
    ``attention_mask`` None) and [k, w] when padded (``attention_mask`` set,
    ``position_ids`` None). Scored token s is ``targets[s]``, predicted at flat
    position ``predictors[s]`` of ``input_ids``; it sits at ``(rows[scored_row[s]],
    scored_col[s])`` of the batch. ``weight`` is 0 for a filler micro-batch that
    only keeps data-parallel ranks in step (its loss must not count).
    """

    rows: torch.Tensor
    input_ids: torch.Tensor
    position_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None
    predictors: torch.Tensor
    targets: torch.Tensor
    scored_row: torch.Tensor
    scored_col: torch.Tensor
    tokens: int
    weight: float = 1.0

    @property
    def positions(self) -> int:
        """Positions the forward computes: ``tokens`` plus padding."""
        return self.input_ids.numel()

    def scatter(self, values: torch.Tensor, width: int) -> torch.Tensor:
        """Per-scored-token ``values`` [n] as [k, width] rows of the batch (0 elsewhere; differentiable)."""
        out = values.new_zeros(len(self.rows), width)
        return out.index_put((self.scored_row.to(values.device), self.scored_col.to(values.device)), values)

    def to(self, device) -> "MicroBatch":
        """The tensors the model reads, on ``device`` (index bookkeeping stays where it is)."""
        move = (lambda t: None if t is None else t.to(device))
        return MicroBatch(self.rows, move(self.input_ids), move(self.position_ids), move(self.attention_mask),
                          move(self.predictors), move(self.targets), self.scored_row, self.scored_col, self.tokens,
                          self.weight)

    def as_filler(self) -> "MicroBatch":
        """The same forward with weight 0 (see the class docstring)."""
        return MicroBatch(self.rows, self.input_ids, self.position_ids, self.attention_mask, self.predictors,
                          self.targets, self.scored_row, self.scored_col, self.tokens, 0.0)


def sequence_lengths(attention_mask: torch.Tensor) -> list[int]:
    """Tokens per row of a right-padded [B, T] mask; refuses other layouts (packing reads each row's prefix)."""
    lengths = attention_mask.sum(dim=1)
    prefix = torch.arange(attention_mask.shape[1])[None, :] < lengths[:, None]
    if not torch.equal(prefix, attention_mask.bool().cpu()):
        raise ValueError("micro-batching needs right-padded rows (attention_mask 1...1 0...0); got another layout")
    return lengths.tolist()


def _scored(scored: torch.Tensor, row: int, length: int) -> torch.Tensor:
    """Columns of ``row`` whose token is scored; column 0 has no predecessor, so it never is."""
    return torch.nonzero(scored[row, 1:length]).flatten() + 1


def _packed(input_ids: torch.Tensor, scored: torch.Tensor, rows: list[int], lengths: Sequence[int]) -> MicroBatch:
    ids, positions, predictors, targets, srow, scol = [], [], [], [], [], []
    offset = 0
    for j, r in enumerate(rows):
        n = lengths[r]
        cols = _scored(scored, r, n)
        ids.append(input_ids[r, :n])
        positions.append(torch.arange(n))
        predictors.append(offset + cols - 1)
        targets.append(input_ids[r, cols])
        srow.append(torch.full_like(cols, j))
        scol.append(cols)
        offset += n
    return MicroBatch(torch.tensor(rows), torch.cat(ids)[None], torch.cat(positions)[None], None,
                      torch.cat(predictors), torch.cat(targets), torch.cat(srow), torch.cat(scol), offset)


def _padded(input_ids: torch.Tensor, attention_mask: torch.Tensor, scored: torch.Tensor, rows: list[int],
            lengths: Sequence[int]) -> MicroBatch:
    width = max(lengths[r] for r in rows)
    predictors, targets, srow, scol = [], [], [], []
    for j, r in enumerate(rows):
        cols = _scored(scored, r, lengths[r])
        predictors.append(j * width + cols - 1)
        targets.append(input_ids[r, cols])
        srow.append(torch.full_like(cols, j))
        scol.append(cols)
    index = torch.tensor(rows)
    return MicroBatch(index, input_ids[index, :width], None, attention_mask[index, :width],
                      torch.cat(predictors), torch.cat(targets), torch.cat(srow), torch.cat(scol),
                      sum(lengths[r] for r in rows))


def make_micro_batches(input_ids: torch.Tensor, attention_mask: torch.Tensor, scored: torch.Tensor,
                       rows: Sequence[int], max_tokens: int, packed: bool = True) -> list[MicroBatch]:
    """Split batch ``rows`` of right-padded [B, T] tensors into forwards of at most ``max_tokens`` positions.

    ``scored`` [B, T] marks the tokens whose log-probabilities are wanted (the loss mask).
    Packed: first-fit-decreasing bins of whole sequences. Padded: consecutive rows, padded
    to the group's longest. A single sequence longer than ``max_tokens`` still gets a forward
    of its own.
    """
    rows = [int(r) for r in rows]
    all_lengths = sequence_lengths(attention_mask)
    lengths = [all_lengths[r] for r in rows]
    plan = first_fit_decreasing(lengths, max_tokens) if packed else padded_groups(lengths, max_tokens)
    scored = scored.bool().cpu()
    input_ids, attention_mask = input_ids.cpu(), attention_mask.cpu()
    out = []
    for group in plan:
        members = [rows[i] for i in group]
        out.append(_packed(input_ids, scored, members, all_lengths) if packed
                   else _padded(input_ids, attention_mask, scored, members, all_lengths))
    return out


def pad_to_count(micro_batches: list[MicroBatch], count: int) -> list[MicroBatch]:
    """Append filler copies of the smallest micro-batch until there are ``count`` (ranks must agree on
    the number of forwards and backwards when ZeRO gathers parameters or reduces gradients inside them)."""
    if count <= len(micro_batches):
        return micro_batches
    if not micro_batches:
        raise ValueError("pad_to_count: nothing to copy a filler from (an empty rank)")
    smallest = min(micro_batches, key=lambda mb: mb.positions).as_filler()
    return micro_batches + [smallest] * (count - len(micro_batches))
