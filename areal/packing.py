"""Token-budget micro-batches for learner passes: which rows share one forward, and how they are laid out.

A learner never runs a whole batch through the model at once: rows are grouped so
that one forward holds at most ``learner.max_tokens_per_mb`` positions. Two layouts:

* packed (default): whole sequences are packed into rows of at most ``row_tokens``
  (first-fit decreasing; by default the longest sequence's length), and rows into
  micro-batches. Positions restart at 0 for every sequence, which is how Hugging Face
  models recognise packed sequences and keep attention inside each one. Rows are not
  made longer than that because attention kernels given a block-diagonal mask
  (SDPA, eager) still compute every query-key pair of a row: one row of all 2,300
  tokens of the CPU demo's batch made its learner step 3x slower than padded rows;
  rows as long as the longest sequence cost no more attention than padding does.
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

    ``input_ids`` is [r, w]: packed rows (``position_ids`` restart per sequence and
    per row tail of padding, ``attention_mask`` None) or one right-padded row per
    sequence (``attention_mask`` set, ``position_ids`` None). Scored token s is ``targets[s]``, predicted at flat
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


def _packed(input_ids: torch.Tensor, scored: torch.Tensor, lines: list[list[int]],
            lengths: Sequence[int]) -> MicroBatch:
    """Each of ``lines`` (batch rows) concatenated into one row; rows right-padded to the longest with a
    segment of their own (positions 0, 1, ...), which causal attention keeps away from the real tokens."""
    width = max(sum(lengths[r] for r in line) for line in lines)
    ids = torch.zeros(len(lines), width, dtype=input_ids.dtype)
    positions = torch.zeros(len(lines), width, dtype=torch.long)
    rows, predictors, targets, srow, scol = [], [], [], [], []
    tokens = 0
    for i, line in enumerate(lines):
        offset = 0
        for r in line:
            n = lengths[r]
            cols = _scored(scored, r, n)
            ids[i, offset:offset + n] = input_ids[r, :n]
            positions[i, offset:offset + n] = torch.arange(n)
            predictors.append(i * width + offset + cols - 1)
            targets.append(input_ids[r, cols])
            srow.append(torch.full_like(cols, len(rows)))
            scol.append(cols)
            rows.append(r)
            offset += n
        positions[i, offset:] = torch.arange(width - offset)
        tokens += offset
    return MicroBatch(torch.tensor(rows), ids, positions, None, torch.cat(predictors), torch.cat(targets),
                      torch.cat(srow), torch.cat(scol), tokens)


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
                       rows: Sequence[int], max_tokens: int, packed: bool = True,
                       row_tokens: int = 0) -> list[MicroBatch]:
    """Split batch ``rows`` of right-padded [B, T] tensors into forwards of at most ``max_tokens`` positions.

    ``scored`` [B, T] marks the tokens whose log-probabilities are wanted (the loss mask).
    Packed: first-fit-decreasing rows of whole sequences, at most ``row_tokens`` long (0 = the
    longest sequence's length), then as many rows per forward as the budget holds. Padded:
    consecutive batch rows, padded to the group's longest. A single sequence longer than
    ``max_tokens`` still gets a forward of its own.
    """
    rows = [int(r) for r in rows]
    all_lengths = sequence_lengths(attention_mask)
    lengths = [all_lengths[r] for r in rows]
    scored = scored.bool().cpu()
    input_ids, attention_mask = input_ids.cpu(), attention_mask.cpu()
    if not packed:
        return [_padded(input_ids, attention_mask, scored, [rows[i] for i in group], all_lengths)
                for group in padded_groups(lengths, max_tokens)]
    width = max([row_tokens, *lengths]) if lengths else 1
    lines = [[rows[i] for i in line] for line in first_fit_decreasing(lengths, width)]
    per_forward = max(1, max_tokens // width)
    return [_packed(input_ids, scored, lines[i:i + per_forward], all_lengths)
            for i in range(0, len(lines), per_forward)]


def pad_to_count(micro_batches: list[MicroBatch], count: int) -> list[MicroBatch]:
    """Append filler copies of the smallest micro-batch until there are ``count`` (ranks must agree on
    the number of forwards and backwards when ZeRO gathers parameters or reduces gradients inside them)."""
    if count <= len(micro_batches):
        return micro_batches
    if not micro_batches:
        raise ValueError("pad_to_count: nothing to copy a filler from (an empty rank)")
    smallest = min(micro_batches, key=lambda mb: mb.positions).as_filler()
    return micro_batches + [smallest] * (count - len(micro_batches))
