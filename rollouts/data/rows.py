"""Dataset rows as ``TaskSample``s, built one at a time when the controller draws them.

The rows stay in their memory-mapped Arrow tables; a ``RowSamples`` holds only the numbers of the rows it
serves (an int64 array: 8 MB for a million rows), so a large dataset costs the driver almost nothing until
its rows are used.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from rollouts.data.columns import CHAT, RowSpec
from rollouts.data.sources import Segment
from rollouts.tasks.base import TaskSample


class RowSamples(Sequence[TaskSample]):
    """The rows numbered ``index`` (over ``segments`` end to end) as task samples."""

    def __init__(self, segments: list[Segment], kinds: list[str], spec: RowSpec, index: np.ndarray):
        import datasets

        self.segments, self.kinds, self.spec = segments, kinds, spec
        self.index = np.asarray(index, dtype=np.int64)
        self.starts = np.cumsum([0] + [len(s) for s in segments])
        # one table over every source: concatenating datasets joins their Arrow tables without copying
        self.rows = segments[0].rows if len(segments) == 1 else datasets.concatenate_datasets(
            [s.rows for s in segments])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        row = int(self.index[i])
        part = int(np.searchsorted(self.starts, row, side="right")) - 1
        record = self.rows[row]
        return TaskSample(id=f"{Path(self.segments[part].name).name}:{row - int(self.starts[part])}",
                          prompt=row_prompt(record, self.kinds[part], self.spec),
                          reference=row_reference(record, self.spec), columns=record)

    def digest_parts(self) -> list:
        """What identifies these samples beyond the source bytes: the row numbers and how rows become prompts."""
        return [self.spec.prompt_key, self.spec.template, self.spec.answer_key,
                hashlib.sha256(self.index.tobytes()).hexdigest()[:16]]


def row_prompt(record: dict, kind: str, spec: RowSpec):
    """A row's prompt: the template over its columns, its text, or its conversation as a tuple of messages."""
    if spec.template:
        return spec.template.format(**record)
    prompt = record[spec.prompt_key]
    if kind == CHAT:  # Arrow gives every message every field of the struct type; unset ones are None
        return tuple({k: v for k, v in message.items() if v is not None} for message in prompt)
    return prompt


def row_reference(record: dict, spec: RowSpec) -> str:
    """A row's reference answer as text ("" without an answer column)."""
    value = record.get(spec.answer_key)
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # a CSV column of whole numbers reads as floats: "72", not "72.0"
    return str(value)
