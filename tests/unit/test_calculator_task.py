"""The multi-turn demo's task and warm start: 3-digit x 2-digit products, learned as calculator transcripts in
which the model writes the call and the answer and only reads the calculator's result."""

import pytest

from launch.bootstrap import calculator_transcript, sft_batch
from launch.tiny_model import build_char_tokenizer
from rollouts.tasks.arithmetic import ArithmeticTask

MUL = dict(operators=("*",), min_operand=100, max_operand=999, min_operand_b=10, max_operand_b=99)


def test_the_second_operand_has_its_own_range_and_the_default_space_is_unchanged():
    task = ArithmeticTask(eval_size=50, **MUL)
    for s in [*task.train[:200], *task.eval]:
        a, b = (int(x) for x in s.id.split("*"))
        assert 100 <= a <= 999 and 10 <= b <= 99 and s.reference == str(a * b)
    assert task.max_answer_chars == 5
    same = ArithmeticTask(min_operand_b=10, max_operand_b=99)
    assert [s.id for s in same.train[:50]] == [s.id for s in ArithmeticTask().train[:50]]


def test_a_bad_second_operand_range_is_refused():
    with pytest.raises(ValueError, match="min_operand_b"):
        ArithmeticTask(min_operand_b=50, max_operand_b=10)


def test_a_calculator_transcript_trains_on_the_call_and_the_answer_never_on_the_result():
    tokenizer = build_char_tokenizer()
    sample = ArithmeticTask(**MUL).train[0]
    assert [text for text, _ in calculator_transcript(sample)] == [f"[calculator {sample.id}]",
                                                                   "{" + sample.reference + "}", sample.reference]
    ids, mask, labels = sft_batch(tokenizer, [sample], transcript="calculator")
    text = tokenizer.decode(ids[0].tolist())
    assert text == f"{sample.prompt}[calculator {sample.id}]{{{sample.reference}}}{sample.reference}<eos>"
    trained = "".join(tokenizer.decode([t]) if t >= 0 else "_" for t in labels[0].tolist())
    blank = "_" * len(sample.prompt)
    result = "_" * (len(sample.reference) + 2)
    assert trained == f"{blank}[calculator {sample.id}]{result}{sample.reference}<eos>"
