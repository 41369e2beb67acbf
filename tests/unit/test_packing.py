"""Token-budget micro-batches: every scored token is placed exactly once, budgets hold, layouts are exact."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from areal.packing import first_fit_decreasing, make_micro_batches, pad_to_count, padded_groups, sequence_lengths


def right_padded(lengths, width=None, seed=0):
    """ids [B, T] with random tokens in each row's prefix, a right-padded mask, and a score mask that skips
    each row's first two tokens (the prompt)."""
    width = width or max(lengths)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 50, (len(lengths), width), generator=gen)
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
    ids = ids * mask
    scored = mask.bool() & (torch.arange(width)[None] >= 2)
    return ids, mask, scored


@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.integers(1, 64))
@settings(max_examples=200, deadline=None)
def test_ffd_bins_hold_every_index_once_and_respect_the_budget(lengths, capacity):
    bins = first_fit_decreasing(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    for b in bins:
        assert sum(lengths[i] for i in b) <= capacity or len(b) == 1  # an oversized sequence rides alone
    # no two bins could have been merged (first fit leaves at most one bin at most half full)
    half_empty = [b for b in bins if sum(lengths[i] for i in b) <= capacity / 2]
    assert len(half_empty) <= 1


def test_ffd_packs_long_first_and_fills_gaps():
    assert first_fit_decreasing([5, 3, 7, 2, 1], 8) == [[2, 4], [0, 1], [3]]


@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.integers(1, 64))
@settings(max_examples=200, deadline=None)
def test_padded_groups_are_consecutive_and_fit_when_padded(lengths, capacity):
    groups = padded_groups(lengths, capacity)
    assert [i for g in groups for i in g] == list(range(len(lengths)))
    for g in groups:
        assert len(g) * max(lengths[i] for i in g) <= capacity or len(g) == 1


@pytest.mark.parametrize("packed", [True, False])
def test_micro_batches_place_every_scored_token_once_at_its_batch_position(packed):
    lengths = [9, 4, 7, 3, 12, 5]
    ids, mask, scored = right_padded(lengths, width=14)
    mbs = make_micro_batches(ids, mask, scored, range(6), max_tokens=16, packed=packed)
    seen = torch.zeros_like(scored, dtype=torch.long)
    for mb in mbs:
        assert mb.positions <= 16 or len(mb.rows) == 1
        flat = mb.input_ids.reshape(-1)
        # the predictor of each scored token is the position right before it in the same sequence
        assert torch.equal(flat[mb.predictors + 1], mb.targets)
        rows = mb.rows[mb.scored_row]
        assert torch.equal(ids[rows, mb.scored_col], mb.targets)
        seen[rows, mb.scored_col] += 1
        if packed:
            assert mb.attention_mask is None and mb.position_ids.shape == mb.input_ids.shape
            # positions restart with every sequence: a token's position is its column in its own batch row
            assert torch.equal(mb.position_ids.reshape(-1)[mb.predictors + 1], mb.scored_col)
            assert mb.input_ids.shape[1] <= max(lengths)  # rows no longer than the longest sequence
        else:
            assert mb.position_ids is None and mb.input_ids.shape[0] == len(mb.rows)
    assert torch.equal(seen, scored.long())


def test_packed_rows_carry_no_padding_and_padded_rows_report_it():
    ids, mask, scored = right_padded([10, 2, 2, 2, 2, 2])
    packed = make_micro_batches(ids, mask, scored, range(6), max_tokens=20, packed=True)
    padded = make_micro_batches(ids, mask, scored, range(6), max_tokens=60, packed=False)
    assert len(packed) == 1 and packed[0].positions == packed[0].tokens == 20  # rows [10] and [2, 2, 2, 2, 2]
    assert len(padded) == 1 and padded[0].positions == 60 and padded[0].tokens == 20


def test_scatter_puts_values_back_in_batch_rows_and_passes_gradients():
    ids, mask, scored = right_padded([5, 3, 4])
    (mb,) = make_micro_batches(ids, mask, scored, [2, 0], max_tokens=100)
    values = torch.arange(1.0, len(mb.targets) + 1, requires_grad=True)
    out = mb.scatter(values, ids.shape[1])
    assert out.shape == (2, 5)
    assert out[mb.scored_row, mb.scored_col].tolist() == values.tolist()
    assert out.sum().item() == values.sum().item()  # zeros elsewhere
    out.sum().backward()
    assert torch.equal(values.grad, torch.ones_like(values))


def test_fillers_copy_the_smallest_forward_with_zero_weight():
    ids, mask, scored = right_padded([8, 8, 2])
    mbs = make_micro_batches(ids, mask, scored, range(3), max_tokens=8)
    padded = pad_to_count(mbs, len(mbs) + 2)
    assert padded[:len(mbs)] == mbs and all(mb.weight == 1.0 for mb in mbs)
    assert [mb.weight for mb in padded[len(mbs):]] == [0.0, 0.0]
    assert padded[-1].tokens == min(mb.tokens for mb in mbs)


def test_rows_that_are_not_right_padded_are_refused():
    with pytest.raises(ValueError, match="right-padded"):
        sequence_lengths(torch.tensor([[0, 1, 1]]))


def test_packed_rows_grow_to_row_tokens_and_forwards_hold_as_many_rows_as_fit():
    ids, mask, scored = right_padded([6, 4, 2, 3, 3, 2, 2, 2])
    default = make_micro_batches(ids, mask, scored, range(8), max_tokens=12)
    assert [tuple(mb.input_ids.shape) for mb in default] == [(2, 6), (2, 6)]  # rows of 6, two per forward
    wide = make_micro_batches(ids, mask, scored, range(8), max_tokens=24, row_tokens=12)
    assert [tuple(mb.input_ids.shape) for mb in wide] == [(2, 12)]
    assert sum(mb.tokens for mb in wide) == 24 and wide[0].positions == 24
