"""Every row checked once, at load, column by column over the Arrow data (no Python loop over rows).

A prompt column holds strings, or conversations: lists of ``{role, content}`` messages (TRL's conversational
format; one that ends with an assistant message is a prefill the model continues). A prompt template reads other columns; the answer column and columns a reward names must be present
and hold strings (or numbers, for answers). The first bad row fails the load, naming its source, its row
number there (0-based) and its column, with the fix.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from rollouts.data.sources import Segment

ROLES = ("system", "user", "assistant", "tool")
TEXT, CHAT, TEMPLATE = "text", "chat", "template"


class DatasetRowError(ValueError):
    """A row that cannot be used: the message names the source, the row, the column and the fix."""


@dataclass(frozen=True)
class RowSpec:
    """Which columns a task reads: the prompt (a column, or a template over columns), the answer and any
    columns its rewards need (``required_text``: name -> the config key that names it)."""

    prompt_key: str
    template: str = ""
    answer_key: str = ""
    answer_required: bool = False
    required_text: tuple[tuple[str, str], ...] = ()
    prompt_key_name: str = "task.prompt_key"  # how errors name the keys (eval sets have their own)
    answer_key_name: str = "task.answer_key"


def template_fields_of(template: str, key: str) -> list[str]:
    """The column names a prompt template reads; a malformed template raises naming ``key``."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        raise DatasetRowError(f"{key} = {template!r} is not a format string ({exc}); write literal braces as "
                              "{{ and }}") from None
    if any(not f.isidentifier() for f in fields):
        raise DatasetRowError(f"{key} = {template!r}: fields must be plain column names, as in 'Solve: {{problem}}'")
    return fields


def check_segment(segment: Segment, spec: RowSpec) -> str:
    """Check every row of ``segment`` against ``spec``; returns the prompt kind: text, chat or template."""
    table = segment.rows.data
    names = set(table.column_names)

    def missing(column: str, key: str) -> DatasetRowError:
        return DatasetRowError(f"{segment.name}: no column {column!r} ({key}); its columns are "
                               f"{sorted(names)}: set {key} to one of them")

    if spec.template:
        fields = template_fields_of(spec.template, spec.prompt_key_name.replace("prompt_key", "prompt_template"))
        for field in fields:
            if field not in names:
                raise missing(field, spec.prompt_key_name.replace("prompt_key", "prompt_template"))
            _check_no_nulls(segment, table.column(field), field, "a value for the prompt template")
        kind = TEMPLATE
    else:
        if spec.prompt_key not in names:
            raise missing(spec.prompt_key, spec.prompt_key_name)
        kind = _check_prompt_column(segment, table.column(spec.prompt_key), spec.prompt_key)
    if spec.answer_key in names:
        _check_answers(segment, table.column(spec.answer_key), spec.answer_key)
    elif spec.answer_required:
        raise missing(spec.answer_key, spec.answer_key_name)
    for column, key in spec.required_text:
        if column not in names:
            raise missing(column, key)
        _check_strings(segment, table.column(column), column)
    return kind


def _row_error(segment: Segment, row: int, column: str, problem: str) -> DatasetRowError:
    return DatasetRowError(f"{segment.name}, row {row} (0-based), column {column!r}: {problem}")


def _first(mask) -> int:
    """Index of the first true entry of a boolean (chunked) array, or -1."""
    return pc.index(mask, True).as_py()


def _check_no_nulls(segment: Segment, column, name: str, expected: str) -> None:
    if column.null_count:
        raise _row_error(segment, _first(pc.is_null(column)), name, f"is empty (null); expected {expected}")


def _check_strings(segment: Segment, column, name: str) -> None:
    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        raise _row_error(segment, 0, name, f"holds {column.type}, expected strings")
    _check_no_nulls(segment, column, name, "a string")


def _check_answers(segment: Segment, column, name: str) -> None:
    kind = column.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
            or pa.types.is_floating(kind)):
        raise _row_error(segment, 0, name, f"holds {kind}; expected the reference answer as a string or a number")
    _check_no_nulls(segment, column, name, "the reference answer")


def _check_prompt_column(segment: Segment, column, name: str) -> str:
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        _check_no_nulls(segment, column, name, "a prompt string")
        empty = pc.equal(pc.utf8_length(column), 0)
        if pc.any(empty).as_py():
            raise _row_error(segment, _first(empty), name, "is an empty string; expected a prompt")
        return TEXT
    if (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_struct(kind.value_type):
        _check_conversations(segment, column, name)
        return CHAT
    raise _row_error(segment, 0, name, f"holds {kind}; expected a prompt string or a list of {{role, content}} "
                                       "chat messages")


def _check_conversations(segment: Segment, column, name: str) -> None:
    fields = {kind.name for kind in column.type.value_type}
    if not {"role", "content"} <= fields:
        raise _row_error(segment, 0, name, f"messages have fields {sorted(fields)}; each needs 'role' and 'content'")
    _check_no_nulls(segment, column, name, "a list of chat messages")
    empty = pc.equal(pc.list_value_length(column), 0)
    if pc.any(empty).as_py():
        raise _row_error(segment, _first(empty), name, "is an empty conversation; expected at least one message")
    messages = pc.list_flatten(column)
    parents = pc.list_parent_indices(column)
    roles, contents = pc.struct_field(messages, "role"), pc.struct_field(messages, "content")
    bad_role = pc.invert(pc.fill_null(pc.is_in(roles, value_set=pa.array(ROLES)), False))
    if pc.any(bad_role).as_py():
        at = _first(bad_role)
        raise _row_error(segment, parents[at].as_py(), name, f"message {at - _offset(parents, at)} has role "
                                                             f"{roles[at].as_py()!r}; expected one of {ROLES}")
    if not (pa.types.is_string(contents.type) or pa.types.is_large_string(contents.type)):
        raise _row_error(segment, 0, name, f"message content holds {contents.type}; expected strings")
    if contents.null_count:
        at = _first(pc.is_null(contents))
        raise _row_error(segment, parents[at].as_py(), name, f"message {at - _offset(parents, at)} has no content")
def _offset(parents, at: int) -> int:
    """Index of the first message of the row that message ``at`` belongs to."""
    row = parents[at].as_py()
    return _first(pc.equal(parents, row))
