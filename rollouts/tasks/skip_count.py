"""Counting down ("40_down_by_7:" -> "40,33,26,19,12,5"): a task whose correct answers are long-tailed by nature.

Reasoning models write answers of very different lengths within one batch, and that is where an
asynchronous trainer differs from a synchronous one. This task has that shape without forcing any
length: the answer lists every term from a start down by a step while it stays non-negative, so its
length is the number of terms, and the number of terms is drawn from a truncated power law
``P(n) ∝ n^-exponent`` on [1, max_terms]. With the defaults (exponent 1.2, 48 terms at most) a
correct answer is 1 to 217 characters long, half of them 11 or fewer (the tiny model's tokens are
characters), and a batch of 16 prompts usually holds one of 150.

Each term is the previous one less the step, and the answer ends after the first term smaller than
the step: every step, the stop included, is local (a first version counted up to a limit: the tiny
model could not learn when to stop, 79% of its warm start's answers ran to the token budget, and RL
then learned to stop after one term on every problem). So the tiny model learns it by supervised
warm start (launch/bootstrap) and gets better at it under RL, while a long answer stays harder to
get all right than a short one.

Problems: step in [2, 49], start = (n - 1) * step + [0, step - 1] for the drawn n (start >= 1);
drawn with a seeded RNG. The first ``holdout_fraction`` of the draw is held out (``eval`` is its first
``eval_size``), the rest, less any problem also held out, is ``train``: disjoint, and the same for the
same seed and settings whatever ``eval_size`` is. A problem may be drawn more than once: there are
~1,200 problems of each length, and skipping repeats would thin out the short ones. Scoring: the
completion cut at its end marker (EOS or newline) must equal the reference exactly.
"""

from __future__ import annotations

import bisect
import itertools
import random

from rollouts.tasks.arithmetic import cut_at_end_marker
from rollouts.tasks.base import ScoredTask, TaskSample

STEP = (2, 49)
DRAWN = 40_000  # problems drawn per seed
# underscores, not spaces: the tiny model's tokenizer, loaded as the Qwen2 tokenizer its config names, drops whitespace
PROMPT = "{start}_down_by_{step}:"


def terms_cdf(max_terms: int, exponent: float) -> list[float]:
    """Cumulative P(n <= k) for k = 1..max_terms of the truncated power law P(n) ∝ n^-exponent."""
    weights = [n ** -exponent for n in range(1, max_terms + 1)]
    total = sum(weights)
    return [w / total for w in itertools.accumulate(weights)]


class SkipCountTask(ScoredTask):
    """``start_down_by_step:`` prompts; reward 1 for exactly the terms ``start, start-step, ... >= 0``."""

    def __init__(self, seed: int = 0, eval_size: int = 200, max_terms: int = 48, exponent: float = 1.2,
                 holdout_fraction: float = 0.02, train_size: int | None = None):
        if max_terms < 1:
            raise ValueError(f"SkipCountTask: max_terms must be >= 1, got {max_terms}")
        if exponent < 0:
            raise ValueError(f"SkipCountTask: exponent must be >= 0, got {exponent}")
        if not 0 < holdout_fraction < 1:
            raise ValueError(f"SkipCountTask: holdout_fraction must be in (0, 1), got {holdout_fraction}")
        self.max_terms, self.exponent = max_terms, exponent
        rng, cdf = random.Random(seed), terms_cdf(max_terms, exponent)
        drawn = []
        for _ in range(DRAWN):
            terms = min(bisect.bisect_left(cdf, rng.random()) + 1, max_terms)
            step = rng.randint(*STEP)
            drawn.append(self.problem(max(1, (terms - 1) * step + rng.randrange(step)), step))
        pool = max(1, int(len(drawn) * holdout_fraction))
        held_out = drawn[:pool]
        unseen = {s.id for s in held_out}
        rest = [s for s in drawn[pool:] if s.id not in unseen]
        train_size = len(rest) if train_size is None else train_size
        if not 1 <= eval_size <= len(held_out) or not 1 <= train_size <= len(rest):
            raise ValueError(f"SkipCountTask: eval_size={eval_size} must be in [1, {len(held_out)}] and "
                             f"train_size={train_size} in [1, {len(rest)}]")
        super().__init__(train=rest[:train_size], eval=held_out[:eval_size])

    @staticmethod
    def problem(start: int, step: int) -> TaskSample:
        """The sample counting down from ``start`` by ``step`` to the last non-negative term."""
        reference = ",".join(str(v) for v in range(start, -1, -step))
        return TaskSample(id=f"{start}down{step}", prompt=PROMPT.format(start=start, step=step), reference=reference)

    @property
    def max_answer_chars(self) -> int:
        """Longest reference the problem space allows (sizes generation budgets)."""
        step = STEP[1]
        return len(self.problem((self.max_terms - 1) * step + step - 1, step).reference)

    def score(self, completion: str, sample: TaskSample) -> float:
        """1.0 if the completion, up to its end marker, is exactly the reference's terms; else 0.0."""
        return 1.0 if cut_at_end_marker(completion) == sample.reference else 0.0
