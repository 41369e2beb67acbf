"""Generated integer arithmetic problems ("37+85=" -> "122"), the CPU demo's task.

The default, two-digit addition with both operands in [10, 99], is sized for
the CPU demo: every prompt has the same layout, which the tiny model learns
more reliably than mixed 1- and 2-digit operands, and a partly trained model
improves under RL within about 100 steps.

Problems are drawn without replacement from the space ``operators x [lo, hi]^2``
with a seeded RNG; the first ``holdout_fraction`` of the draw is the held-out
pool (``eval`` is its first ``eval_size`` problems), the rest is ``train``.
The splits are disjoint by construction and identical for the same seed and
problem space, whatever ``eval_size`` is.

The prompt is ``prompt_template`` filled with the operands and operator; the default is the bare
``a<op>b=`` the character model learns, an instruct model gets a question with the answer format
(``task.prompt_template``).

Scoring rule: the completion is cut at the first end marker (the ``<eos>``
token text or a newline; an engine that stops at EOS usually drops it
already), surrounding whitespace is stripped, and the rest must equal the
reference exactly: a canonical integer, ``-`` for negatives, no leading zeros,
no spaces or other text. Anything else scores 0. With ``answer_format="last_number"`` (chat models
that answer in a sentence) the last integer of the completion, before any ``<eos>``, must equal the
reference: "The answer is 12." scores 1, "12 is wrong, it is 13" scores 0 for 12, a decimal like "12.5"
is no integer answer.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from rollouts.tasks.base import ScoredTask, TaskSample

END_MARKERS = ("<eos>", "\n")
ANSWER_FORMATS = ("exact", "last_number")
INTEGER = re.compile(r"(?<![\d.])-?\d+(?![\d.]*\d)")
MAX_DRAWN = 100_000  # problems drawn per seed: all of a 2-digit space, a sample of larger ones
OPERATORS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def cut_at_end_marker(text: str) -> str:
    """The text before the first end marker (``END_MARKERS``), stripped of whitespace."""
    for marker in END_MARKERS:
        text = text.split(marker, 1)[0]
    return text.strip()


class ArithmeticTask(ScoredTask):
    """``a<op>b=`` prompts with operands in [min_operand, max_operand]; reward 1 for the exact result."""

    def __init__(
        self,
        seed: int = 0,
        eval_size: int = 200,
        train_size: int | None = None,
        min_operand: int = 10,
        max_operand: int = 99,
        operators: Sequence[str] = ("+",),
        holdout_fraction: float = 0.1,
        prompt_template: str = "{a}{op}{b}=",
        answer_format: str = "exact",
        min_operand_b: int | None = None,
        max_operand_b: int | None = None,
    ):
        """``min_operand_b``/``max_operand_b``: the second operand's range (None: the first's)."""
        unknown = [op for op in operators if op not in OPERATORS]
        if not operators or unknown:
            raise ValueError(
                f"ArithmeticTask: operators must be a non-empty subset of {sorted(OPERATORS)}, got {list(operators)}"
            )
        if not 0 <= min_operand <= max_operand:
            raise ValueError(
                f"ArithmeticTask: need 0 <= min_operand <= max_operand, got min_operand={min_operand}, "
                f"max_operand={max_operand}"
            )
        if not 0 < holdout_fraction < 1:
            raise ValueError(f"ArithmeticTask: holdout_fraction must be in (0, 1), got {holdout_fraction}")
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(f"ArithmeticTask: answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
        self.operators, self.prompt_template = tuple(operators), prompt_template
        self.answer_format = answer_format
        self.min_operand, self.max_operand = min_operand, max_operand
        self.min_b = min_operand if min_operand_b is None else min_operand_b
        self.max_b = max_operand if max_operand_b is None else max_operand_b
        if not 0 <= self.min_b <= self.max_b:
            raise ValueError(f"ArithmeticTask: need 0 <= min_operand_b <= max_operand_b, got {self.min_b}, {self.max_b}")
        width, self.width_b = max_operand - min_operand + 1, self.max_b - self.min_b + 1
        space = len(self.operators) * width * self.width_b
        # The draw depends only on (seed, space), never on eval_size or train_size: the held-out
        # pool is its first part, so runs that ask for different eval sizes still share one train
        # split that none of their held-out problems is in. random.sample draws without
        # replacement and never materialises a large range.
        order = random.Random(seed).sample(range(space), min(space, MAX_DRAWN))
        pool = max(1, int(len(order) * holdout_fraction))
        held_out, rest = order[:pool], order[pool:]
        train_size = len(rest) if train_size is None else train_size
        if not 1 <= eval_size <= len(held_out) or not 1 <= train_size <= len(rest):
            raise ValueError(
                f"ArithmeticTask: eval_size={eval_size} must be in [1, {len(held_out)}] and train_size={train_size} "
                f"in [1, {len(rest)}] for operators={list(self.operators)}, operands [{min_operand}, {max_operand}], "
                f"holdout_fraction={holdout_fraction}"
            )
        super().__init__(train=[self._problem(i, width) for i in rest[:train_size]],
                         eval=[self._problem(i, width) for i in held_out[:eval_size]])

    def _problem(self, index: int, width: int) -> TaskSample:
        op_index, rest = divmod(index, width * self.width_b)
        a, b = divmod(rest, self.width_b)
        a, b = a + self.min_operand, b + self.min_b
        op = self.operators[op_index]
        return TaskSample(id=f"{a}{op}{b}", prompt=self.prompt_template.format(a=a, op=op, b=b), reference=str(OPERATORS[op](a, b)))

    @property
    def max_answer_chars(self) -> int:
        """Longest reference over the whole problem space (sizes generation budgets)."""
        corners = [OPERATORS[op](a, b) for op in self.operators for a in (self.min_operand, self.max_operand)
                   for b in (self.min_b, self.max_b)]
        return max(len(str(v)) for v in corners)

    def score(self, completion: str, sample: TaskSample) -> float:
        """1.0 if the answer is exactly the reference (``answer_format``: the whole completion cut at its end
        marker, or its last integer); else 0.0."""
        if self.answer_format == "last_number":
            numbers = INTEGER.findall(completion.split(END_MARKERS[0], 1)[0])
            return 1.0 if numbers and numbers[-1] == sample.reference else 0.0
        return 1.0 if cut_at_end_marker(completion) == sample.reference else 0.0
