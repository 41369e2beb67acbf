"""The per-sample built-in rewards a task names in its config (``PER_SAMPLE_BUILTINS``).

Each is a small class built once from ``RewardSettings`` and called as ``reward(output, sample)`` for every
completion, returning a float or ``None`` ("does not apply to this sample"). They are picklable: the reward
processes receive them from the driver. The batched ``http`` built-in lives in ``rollouts.rewards.http``.
"""

from __future__ import annotations

import re

from areal.reward_terms import soft_overlong_penalty
from rollouts.envs.code_reward import score_with_tests
from rollouts.envs.sandbox import Sandbox, SandboxLimits
from rollouts.prompt_format import prefill
from rollouts.rewards.base import RewardInput, RewardSettings
from rollouts.tasks.base import TaskSample

END_MARKER = "<eos>"  # the tiny demo model's EOS text: what follows it was never meant to be read
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
FINAL_ANSWER_MARK = "####"
BOXED = "\\boxed{"
FENCED_BLOCK = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)


def visible_text(completion: str) -> str:
    """The completion up to its first ``<eos>`` (all of it when there is none)."""
    return completion.split(END_MARKER, 1)[0]


def answer_part(completion: str) -> str:
    """What follows the last ``</think>`` of the (eos-cut) completion, or all of it without one."""
    text = visible_text(completion)
    return text.rsplit(THINK_CLOSE, 1)[1] if THINK_CLOSE in text else text


def last_boxed(text: str) -> str | None:
    """The content of the last closed ``\\boxed{...}`` of ``text`` (nested braces kept), or None."""
    start = text.rfind(BOXED)
    while start != -1:
        depth, i = 1, start + len(BOXED)
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start + len(BOXED): i - 1]
        # an unclosed box (a completion cut by the token budget) holds no answer: try the one before
        start = text.rfind(BOXED, 0, start)
    return None


def final_prediction(completion: str) -> str:
    """The text math_verify grades: the last ``\\boxed{}`` (re-wrapped so math-verify reads its content as
    LaTeX), else what follows the last ``####``, else the whole answer part."""
    text = answer_part(completion)
    boxed = last_boxed(text)
    if boxed is not None:
        # a sentence's full stop inside the box makes math-verify read "72." as text, not a number
        content = boxed.strip().rstrip(".").strip()
        return BOXED + content + "}" if content else ""
    if FINAL_ANSWER_MARK in text:
        return text.rsplit(FINAL_ANSWER_MARK, 1)[1].strip()
    return text.strip()


def gold_answer(reference: str) -> str:
    """The reference math_verify grades against: after its last ``####`` without thousands separators (GSM8K's
    answer column), else the reference as is."""
    if FINAL_ANSWER_MARK in reference:
        return reference.rsplit(FINAL_ANSWER_MARK, 1)[1].strip().replace(",", "")
    return reference


class MathVerifyReward:
    """1.0 when the completion's final answer equals the reference under math-verify, else 0.0; None when
    math-verify cannot parse the reference (the reward does not apply, as TRL's ``accuracy_reward``).

    The final answer is taken from the text after the last ``</think>`` (``final_prediction``). Write LaTeX
    references inside ``$...$`` or ``\\boxed{}``: math-verify reads a bare ``\\sqrt{2}`` as nothing (None) and
    a bare ``2^{10}`` as 2.
    """

    def __init__(self, settings: RewardSettings):
        self.settings = settings

    def __call__(self, output: RewardInput, sample: TaskSample) -> float | None:
        """Score one completion against ``sample.reference``."""
        from math_verify import parse, verify

        # math-verify's own timeouts stay off: they use signal.alarm (main thread only) and, on expiry, turn a
        # slow parse into "no match", a wrong answer rather than a failure. The reward pool kills a call past
        # task.reward_timeout_s instead.
        gold = parse(gold_answer(sample.reference), parsing_timeout=None)
        if not gold:
            return None
        prediction = final_prediction(output.text)
        if not prediction:
            return 0.0
        predicted = parse(prediction, parsing_timeout=None)
        if not predicted:
            return 0.0
        return 1.0 if verify(gold, predicted, timeout_seconds=None) else 0.0


class ThinkFormatReward:
    """1.0 when the answer (cut at ``<eos>``) is, after optional leading whitespace, exactly one
    ``<think>...</think>`` block with non-blank thinking, followed by a non-blank answer; else 0.0. The answer
    is the completion after what the prompt prefilled of it (a conversation's final assistant message).

    Any other ``<think>`` or ``</think>`` anywhere (a second block, a stray tag in the answer) scores 0.0.
    """

    def __init__(self, settings: RewardSettings):
        self.settings = settings

    def __call__(self, output: RewardInput, sample: TaskSample) -> float:
        """Score one answer's format: what the prompt prefilled of it (a final assistant message such as
        "<think>") followed by the completion."""
        text = visible_text(prefill(sample.prompt) + output.text).lstrip()
        if text.count(THINK_OPEN) != 1 or text.count(THINK_CLOSE) != 1 or not text.startswith(THINK_OPEN):
            return 0.0
        thinking, _, answer = text[len(THINK_OPEN):].partition(THINK_CLOSE)
        return 1.0 if thinking.strip() and answer.strip() else 0.0


class SoftOverlongReward:
    """DAPO's soft overlong punishment of the completion's token count (``areal.reward_terms``): 0 up to
    rollout.max_new_tokens - task.overlong_buffer tokens, ramping to -1 at rollout.max_new_tokens."""

    def __init__(self, settings: RewardSettings):
        if not 1 <= settings.overlong_buffer <= settings.max_new_tokens:
            raise ValueError(
                f"task.overlong_buffer={settings.overlong_buffer}: expected 1 <= task.overlong_buffer <= "
                f"rollout.max_new_tokens={settings.max_new_tokens} (lower task.overlong_buffer)"
            )
        self.settings = settings

    def __call__(self, output: RewardInput, sample: TaskSample) -> float:
        """The penalty (0 or negative) for ``len(output.token_ids)``."""
        return soft_overlong_penalty(len(output.token_ids), self.settings.max_new_tokens,
                                     self.settings.overlong_buffer)


def extract_program(completion: str) -> str:
    """The last fenced code block (```python or plain ```) of the eos-cut completion, else all of it."""
    text = visible_text(completion)
    blocks = FENCED_BLOCK.findall(text)
    return blocks[-1] if blocks else text


class CodeTestsReward:
    """1.0 when the completion's program passes the assert statements in the sample's ``task.tests_key``
    column, run in the isolated sandbox (``rollouts.envs.code_reward``); else 0.0.

    The sandbox is built on first use, so an unused object pickles without it. It is never insecure: where
    the isolation probe fails, the call raises ``SandboxUnavailableError`` and the sample is recorded as
    failed. Call it outside a running event loop (the sandbox runs one of its own).
    """

    def __init__(self, settings: RewardSettings):
        self.settings = settings
        self._sandbox: Sandbox | None = None

    def __call__(self, output: RewardInput, sample: TaskSample) -> float:
        """Run the completion's program, then the sample's tests, in the sandbox."""
        key = self.settings.tests_key
        tests = sample.columns.get(key)
        if not isinstance(tests, str):
            found = "no such column" if key not in sample.columns else f"a {type(tests).__name__}"
            raise ValueError(
                f"code_tests: sample {sample.id!r} column {key!r} (task.tests_key) must be a string of assert "
                f"statements, got {found}; columns are {sorted(sample.columns)} (set task.tests_key to the tests "
                "column)"
            )
        return score_with_tests(extract_program(output.text), tests, self._get_sandbox())

    def _get_sandbox(self) -> Sandbox:
        if self._sandbox is None:
            wall = self.settings.code_wall_seconds
            self._sandbox = Sandbox(SandboxLimits(wall_seconds=wall, cpu_seconds=max(1, int(wall))))
        return self._sandbox

    def __getstate__(self) -> dict:
        # each process builds its own sandbox: it is per-process state, cheap to make
        return {**self.__dict__, "_sandbox": None}


PER_SAMPLE_BUILTINS: dict[str, type] = {
    "math_verify": MathVerifyReward,
    "think_format": ThinkFormatReward,
    "soft_overlong": SoftOverlongReward,
    "code_tests": CodeTestsReward,
}
