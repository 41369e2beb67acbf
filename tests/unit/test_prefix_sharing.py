"""Shared-prefix rows: a group's prompt goes through the model once, and nothing else changes.

The reference is each sequence in a row of its own; every scored token must get the same
log-probability from a shared-prefix forward, under SDPA's boolean mask and eager attention's
additive one.
"""

import pytest
import torch

from areal.prefix_sharing import PAD, SHARED, common_prefix, families, shared_prefix_micro_batches


def right_padded(seqs: list[list[int]], prompt: list[int]):
    """(input_ids, attention_mask, scored) of ``seqs``; tokens after ``prompt[i]`` positions are scored."""
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    scored = torch.zeros(len(seqs), width, dtype=torch.bool)
    for i, seq in enumerate(seqs):
        ids[i, :len(seq)], mask[i, :len(seq)] = torch.tensor(seq), 1
        scored[i, prompt[i]:len(seq)] = True
    return ids, mask, scored


GROUPS = [
    [5, 6, 7, 8, 20], [5, 6, 7, 8, 21, 22], [5, 6, 7, 8, 20, 23],  # prompt 5 6 7 8; two answers start alike
    [9, 3, 30], [9, 3, 31, 32, 33],  # another prompt
    [4, 40],  # a group of one
]
PROMPTS = [4, 4, 4, 2, 2, 1]


def test_common_prefix():
    assert common_prefix(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4, 5])) == 2
    assert common_prefix(torch.tensor([1, 2]), torch.tensor([1, 2, 4])) == 2
    assert common_prefix(torch.tensor([7]), torch.tensor([1])) == 0


def test_each_group_becomes_one_family_with_its_longest_common_prefix():
    ids, mask, _ = right_padded(GROUPS, PROMPTS)
    lengths = mask.sum(1).tolist()
    assert families(ids, range(6), lengths, row_tokens=100) == [([0, 1, 2], 4), ([3, 4], 2), ([5], 2)]
    # two rows alike beyond the prompt share that too
    assert families(ids, [0, 2], lengths, row_tokens=100) == [([0, 2], 5)]
    # a family stops growing at row_tokens; a row of another prompt sharing too little starts its own
    assert families(ids, range(3), lengths, row_tokens=8) == [([0, 1], 4), ([2], 6)]
    ids[3, 0] = 5  # shares one token with the first family's four
    assert families(ids, [0, 1, 3], lengths, row_tokens=100) == [([0, 1], 4), ([3], 3)]


def test_the_layout_holds_each_prompt_once_and_masks_other_remainders():
    ids, mask, scored = right_padded(GROUPS, PROMPTS)
    (mb,) = shared_prefix_micro_batches(ids, mask, scored, range(6), max_tokens=100, row_tokens=100)
    assert mb.tokens == (4 + 1 + 2 + 2) + (2 + 1 + 3) + 2  # 20 positions instead of 27
    assert sorted(mb.rows.tolist()) == list(range(6))
    allowed = mb.attention_mask[:, 0]
    row, width = 0, mb.input_ids.shape[1]
    first = mb.input_ids[row].tolist()
    assert first[:9] == [5, 6, 7, 8, 20, 21, 22, 20, 23]  # prompt, then each remainder
    assert mb.position_ids[row, :9].tolist() == [0, 1, 2, 3, 4, 4, 5, 4, 5]
    assert allowed[row, 5, :5].tolist() == [True, True, True, True, False]  # 21 sees the prompt, not answer 0
    assert allowed[row, 8, 7] and not allowed[row, 8, 6]  # 23 sees 20 of its own answer, not the second answer
    assert not allowed[row].triu(1).any()  # causal
    pads = [c for c in range(width) if mb.input_ids[row, c] == 0 and c >= mb.tokens]
    for c in pads:
        assert allowed[row, c].nonzero().flatten().tolist() == [c]
    # token 20 of rows 0 and 2 is predicted by the prompt's last position, shared by all three answers
    batch_row = mb.rows[mb.scored_row].tolist()
    firsts = [int(mb.predictors[k]) for k in range(len(batch_row)) if batch_row[k] < 3 and mb.scored_col[k] == 4]
    assert len(firsts) == 3 and len(set(firsts)) == 1
    assert SHARED != PAD


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_scored_log_probs_equal_those_of_separate_rows(tmp_path, attention):
    from transformers import AutoModelForCausalLM

    from launch.tiny_model import TinyModelSize, make_random_tiny_model

    path = make_random_tiny_model(tmp_path, TinyModelSize(hidden_size=32, intermediate_size=64, num_hidden_layers=2))
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention).eval()
    ids, mask, scored = right_padded(GROUPS, PROMPTS)
    with torch.no_grad():
        ref = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for max_tokens in (100, 12):  # one forward, or several
            for mb in shared_prefix_micro_batches(ids, mask, scored, range(6), max_tokens=max_tokens, row_tokens=100,
                                                  additive=attention == "eager"):
                out = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=mb.position_ids)
                logp = torch.log_softmax(out.logits.float(), -1).reshape(-1, out.logits.shape[-1])
                got = logp[mb.predictors, mb.targets]
                rows = mb.rows[mb.scored_row]
                want = ref[rows, mb.scored_col - 1, mb.targets]
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
