"""Skip counting ("12_by_7_to_40:" -> "12,19,26,33,40"): a task whose correct answers are long-tailed by nature.

Reasoning models write answers of very different lengths within one batch, and that is where an
asynchronous trainer differs from a synchronous one. This task has that shape without forcing any
length: the answer lists every term of an arithmetic progression from a start by a step up to a
limit, so its length is the number of terms, and the number of terms is drawn from a truncated
power law ``P(n) ∝ n^-exponent`` on [1, max_terms]. With the defaults (exponent 1.2, 64 terms at
most) a correct answer is 1 to 270 characters long, half of them under 25 (the tiny model's
tokens are characters), and a batch of 16 prompts usually holds one of 150+.

Each term is the previous one plus the step, and the answer ends when the next term would pass the
limit: every step is local, so the tiny model learns it by supervised warm start (launch/bootstrap)
and gets better at it under RL, while a long answer stays harder to get all right than a short one.

Problems: start in [1, 99], step in [2, 19], limit = last term + [0, step - 1]; drawn with a seeded
RNG, duplicates skipped, the first ``holdout_fraction`` of the draw held out (``eval`` is its first
``eval_size``), the rest ``train``: disjoint, and the same for the same seed and settings whatever
``eval_size`` is. Scoring: the completion cut at its end marker (EOS or newline) must equal the
reference exactly.
"""

from __future__ import annotations

import bisect
import itertools
import random

from rollouts.tasks.arithmetic import cut_at_end_marker
from rollouts.tasks.base import ScoredTask, TaskSample

START = (1, 99)
STEP = (2, 19)
DRAWN = 40_000  # problems drawn per seed (the space holds millions)
# underscores, not spaces: the tiny model's tokenizer, loaded as the Qwen2 tokenizer its config names, drops whitespace
PROMPT = "{start}_by_{step}_to_{limit}:"


def terms_cdf(max_terms: int, exponent: float) -> list[float]:
    """Cumulative P(n <= k) for k = 1..max_terms of the truncated power law P(n) ∝ n^-exponent."""
    weights = [n ** -exponent for n in range(1, max_terms + 1)]
    total = sum(weights)
    return [w / total for w in itertools.accumulate(weights)]


class SkipCountTask(ScoredTask):
    """``start_by_step_to_limit:`` prompts; reward 1 for exactly the terms ``start, start+step, ... <= limit``."""

    def __init__(self, seed: int = 0, eval_size: int = 200, max_terms: int = 64, exponent: float = 1.2,
                 holdout_fraction: float = 0.1, train_size: int | None = None):
        if max_terms < 1:
            raise ValueError(f"SkipCountTask: max_terms must be >= 1, got {max_terms}")
        if exponent < 0:
            raise ValueError(f"SkipCountTask: exponent must be >= 0, got {exponent}")
        if not 0 < holdout_fraction < 1:
            raise ValueError(f"SkipCountTask: holdout_fraction must be in (0, 1), got {holdout_fraction}")
        self.max_terms, self.exponent = max_terms, exponent
        rng, cdf = random.Random(seed), terms_cdf(max_terms, exponent)
        problems: dict[str, TaskSample] = {}
        for _ in range(DRAWN):
            terms = min(bisect.bisect_left(cdf, rng.random()) + 1, max_terms)
            start, step = rng.randint(*START), rng.randint(*STEP)
            sample = self.problem(start, step, start + (terms - 1) * step + rng.randrange(step))
            problems.setdefault(sample.id, sample)
        drawn = list(problems.values())
        pool = max(1, int(len(drawn) * holdout_fraction))
        held_out, rest = drawn[:pool], drawn[pool:]
        train_size = len(rest) if train_size is None else train_size
        if not 1 <= eval_size <= len(held_out) or not 1 <= train_size <= len(rest):
            raise ValueError(f"SkipCountTask: eval_size={eval_size} must be in [1, {len(held_out)}] and "
                             f"train_size={train_size} in [1, {len(rest)}]")
        super().__init__(train=rest[:train_size], eval=held_out[:eval_size])

    @staticmethod
    def problem(start: int, step: int, limit: int) -> TaskSample:
        """The sample counting from ``start`` by ``step`` up to ``limit`` (inclusive)."""
        reference = ",".join(str(v) for v in range(start, limit + 1, step))
        return TaskSample(id=f"{start}by{step}to{limit}", prompt=PROMPT.format(start=start, step=step, limit=limit),
                          reference=reference)

    @property
    def max_answer_chars(self) -> int:
        """Longest reference the problem space allows (sizes generation budgets)."""
        start, step = START[1], STEP[1]
        return len(self.problem(start, step, start + (self.max_terms - 1) * step + step - 1).reference)

    def score(self, completion: str, sample: TaskSample) -> float:
        """1.0 if the completion, up to its end marker, is exactly the reference's terms; else 0.0."""
        return 1.0 if cut_at_end_marker(completion) == sample.reference else 0.0
