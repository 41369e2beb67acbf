"""GSM8K-format grade-school math: JSONL rows of "question" and "answer" ("... #### 72").

Every non-blank line must be a JSON object with string fields "question" and
"answer", the answer ending in ``#### <number>``; any other row raises a
``ValueError`` naming the file, the line number and the problem (rows are
never skipped silently). Blank lines are not rows and are ignored.

Scoring rule: if the completion contains ``####`` (the format GSM8K answers
end with), the text after its last ``####`` is the prediction; otherwise the
whole completion is, and math-verify extracts its last answer-like expression
(``\\boxed{}`` first). The prediction scores 1.0 when math-verify finds it
equal to the number after ``####`` in the reference answer, else 0.0.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from rollouts.tasks.base import Task, TaskSample

DEFAULT_TEMPLATE = "Question: {question}\nAnswer:"
FINAL_ANSWER_MARK = "####"
END_MARKER = "<eos>"


def final_answer(answer: str) -> str:
    """The number after the last ``####`` of a GSM8K answer, without thousands separators ('' if none)."""
    if FINAL_ANSWER_MARK not in answer:
        return ""
    return answer.rsplit(FINAL_ANSWER_MARK, 1)[1].strip().replace(",", "")


def read_gsm8k_jsonl(path: str | Path) -> list[tuple[int, str, str]]:
    """(line number, question, final answer) of each row; a malformed row raises naming file and line."""
    path = Path(path)
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for field in ("question", "answer"):
                if field not in row:
                    raise ValueError(f"{path}:{lineno}: missing field {field!r}")
                if not isinstance(row[field], str):
                    kind = type(row[field]).__name__
                    raise ValueError(f"{path}:{lineno}: field {field!r} must be a string, got {kind}")
            number = final_answer(row["answer"])
            if not number:
                raise ValueError(f"{path}:{lineno}: field 'answer' does not end in '{FINAL_ANSWER_MARK} <number>'")
            rows.append((lineno, row["question"], number))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


class GSM8KTask(Task):
    """Questions from GSM8K-format JSONL; reward 1 when math-verify matches the final number."""

    def __init__(
        self,
        path: str | Path,
        eval_path: str | Path | None = None,
        eval_size: int = 200,
        seed: int = 0,
        template: str = DEFAULT_TEMPLATE,
    ):
        if "{question}" not in template:
            raise ValueError(f"GSM8KTask: template must contain '{{question}}', got {template!r}")
        if eval_size < 1:
            raise ValueError(f"GSM8KTask: eval_size must be >= 1, got {eval_size}")
        self.template = template
        path = Path(path)
        train = self._samples(path)
        if eval_path:
            held_out = self._samples(Path(eval_path))[:eval_size]
        else:
            if len(train) <= eval_size:
                raise ValueError(
                    f"GSM8KTask: {path} has {len(train)} rows; holding out eval_size={eval_size} of them leaves no "
                    "training rows (lower task.eval_size or set task.eval_path)"
                )
            train, held_out = train[:-eval_size], train[-eval_size:]
        # held-out rows keep file order; training order is shuffled once, by the seed
        random.Random(seed).shuffle(train)
        super().__init__(train=train, eval=held_out)

    def _samples(self, path: Path) -> list[TaskSample]:
        return [
            TaskSample(id=f"{path.name}:{lineno}", prompt=self.template.format(question=question), reference=number)
            for lineno, question, number in read_gsm8k_jsonl(path)
        ]

    def score(self, completion: str, sample: TaskSample) -> float:
        """1.0 if the completion's final answer equals the reference number under math-verify, else 0.0."""
        from math_verify import parse, verify

        text = completion.split(END_MARKER, 1)[0]
        if FINAL_ANSWER_MARK in text:
            text = text.rsplit(FINAL_ANSWER_MARK, 1)[1]
        # math-verify's own timeouts stay off: they use signal.alarm (main thread only) and, on expiry, make
        # parse/verify return "no match", a wrong answer rather than a failure. The reward pool
        # (rollouts.reward_pool) kills a call past task.reward_timeout_s instead: a timeout, no score.
        predicted = parse(text, parsing_timeout=None)
        if not predicted:
            return 0.0
        gold = parse(sample.reference, parsing_timeout=None)
        return 1.0 if verify(gold, predicted, timeout_seconds=None) else 0.0
