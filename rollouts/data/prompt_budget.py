"""Which rows' prompts fit the engine: at most ``engine.max_model_len - rollout.max_new_tokens`` tokens.

vLLM refuses a prompt that leaves no room for the completion, so such rows are left out at load (and counted)
rather than failing a worker mid-run. Tokenizing every prompt of a million-row dataset would take most of a
minute on two cores, so each row first gets an upper bound from bytes alone: a token covers at least one byte
of its text (byte-level BPE, SentencePiece with byte fallback, WordPiece and character vocabularies all do), so
``tokens(rendered prompt) <= bytes(prompt text) + bytes(what the template adds around it) + 1``. Only rows
whose bound exceeds the budget are tokenized exactly. The bound is checked on the first rows against exact
counts; a tokenizer that breaks it (an expanding normalizer) gets every row tokenized exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rollouts.data.columns import CHAT, TEMPLATE, template_fields_of
from rollouts.data.sources import Segment

log = logging.getLogger(__name__)
CHECKED_ROWS = 256  # rows whose exact count checks the byte bound
NUMBER_SLACK = 32  # bytes a number may take beyond Arrow's rendering of it when Python formats it


@dataclass(frozen=True)
class BudgetResult:
    """``fits``: one flag per row; ``tokenized``: rows that needed an exact count."""

    fits: np.ndarray
    tokenized: int


def prompts_within(segment: Segment, kind: str, prompt_key: str, template: str, prompt_of, encode_len, render,
                   budget: int) -> BudgetResult:
    """Flags of the rows of ``segment`` whose prompt takes at most ``budget`` tokens.

    ``prompt_of(row_index)`` builds a row's prompt (text or conversation); ``encode_len(prompt)`` counts its
    tokens exactly; ``render(prompt)`` is the text that gets tokenized (the chat template applied).
    """
    n = len(segment)
    bound = _byte_bound(segment.rows.data, kind, prompt_key, template, prompt_of, render)
    first = range(min(n, CHECKED_ROWS))
    exact = {i: encode_len(prompt_of(i)) for i in first}
    if any(exact[i] > bound[i] for i in first):
        log.warning("%s: the tokenizer yields more tokens than bytes for some prompts; counting every prompt's "
                    "tokens exactly (slower)", segment.name)
        bound = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    fits = bound <= budget
    unsure = np.flatnonzero(~fits)
    for i in unsure.tolist():
        fits[i] = (exact[i] if i in exact else encode_len(prompt_of(i))) <= budget
    return BudgetResult(fits, len(unsure))


def _byte_bound(table, kind: str, prompt_key: str, template: str, prompt_of, render) -> np.ndarray:
    """Per row: bytes of the prompt's own text plus what rendering adds around it, plus one."""
    n = table.num_rows
    if kind == CHAT:
        column = table.column(prompt_key).combine_chunks()
        messages = pc.list_flatten(column)
        content = pc.binary_length(pc.struct_field(messages, "content")).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
        own = np.bincount(parents, weights=content, minlength=n).astype(np.int64)
        return own + _chat_overheads(column, messages, render) + 1
    if kind == TEMPLATE:
        own = np.full(n, len(template.encode()), dtype=np.int64)
        for field in template_fields_of(template, "task.prompt_template"):
            values = table.column(field)
            text = values if pa.types.is_string(values.type) or pa.types.is_large_string(values.type) else \
                pc.cast(values, pa.string())
            own += pc.binary_length(text).to_numpy(zero_copy_only=False).astype(np.int64)
            if text is not values:
                own += NUMBER_SLACK
    else:
        own = pc.binary_length(table.column(prompt_key)).to_numpy(zero_copy_only=False).astype(np.int64)
    return own + len(render("").encode()) + 1


def _chat_overheads(column, messages, render) -> np.ndarray:
    """What the chat template adds to a conversation's contents, per row: one rendering of each distinct
    sequence of roles with empty contents (datasets have a handful of them)."""
    offsets = pc.subtract(column.offsets, column.offsets[0])  # the flattened messages start at the first row's
    roles = pc.struct_field(messages, "role")
    patterns = pc.binary_join(type(column).from_arrays(offsets, roles), ",").dictionary_encode()
    overhead = np.empty(len(patterns.dictionary), dtype=np.int64)
    codes = patterns.indices.to_numpy(zero_copy_only=False)
    for code, pattern in enumerate(patterns.dictionary.to_pylist()):
        skeleton = tuple({"role": role, "content": ""} for role in pattern.split(","))
        overhead[code] = len(render(skeleton).encode())
    return overhead[codes]
