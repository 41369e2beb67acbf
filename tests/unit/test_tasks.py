"""The generated arithmetic task: splits, determinism, scoring rules (datasets: test_dataset_task.py)."""

import operator

import pytest

from rollouts.tasks import ArithmeticTask, TaskSample

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _solve(prompt: str) -> int:
    body = prompt.removesuffix("=")
    for symbol, fn in OPS.items():
        a, sep, b = body.partition(symbol)
        if sep:
            return fn(int(a), int(b))
    raise AssertionError(f"no operator in {prompt!r}")


def test_arithmetic_is_deterministic_per_seed():
    a, b, c = ArithmeticTask(seed=3), ArithmeticTask(seed=3), ArithmeticTask(seed=4)
    assert a.train == b.train and a.eval == b.eval
    assert a.eval != c.eval


def test_arithmetic_splits_are_disjoint_and_cover_the_space():
    task = ArithmeticTask(seed=0, eval_size=200)
    train, held = {s.prompt for s in task.train}, {s.prompt for s in task.eval}
    assert len(held) == 200 and not train & held
    assert len(train) == 90 * 90 - 810  # the [10, 99]^2 "+" space minus its 10% held-out pool
    assert len({s.id for s in task.train}) == len(task.train)


def test_arithmetic_default_is_fixed_width_two_digit_addition():
    task = ArithmeticTask(eval_size=10)
    assert all(len(s.prompt) == 6 and s.prompt[2] == "+" for s in list(task.eval) + list(task.train[:100]))


def test_arithmetic_train_split_does_not_depend_on_eval_size():
    small, large = ArithmeticTask(seed=1, eval_size=50), ArithmeticTask(seed=1, eval_size=800)
    assert small.train == large.train
    assert large.eval[:50] == small.eval
    assert not {s.prompt for s in large.eval} & {s.prompt for s in small.train}


@pytest.mark.parametrize("operators", [("+",), ("-",), ("*",), ("+", "-", "*")])
def test_arithmetic_references_are_correct(operators):
    task = ArithmeticTask(seed=2, operators=operators, min_operand=0, max_operand=50, eval_size=20, train_size=500)
    for s in list(task.eval) + list(task.train):
        assert s.reference == str(_solve(s.prompt))
        assert s.prompt.endswith("=")
    assert len(task.train) == 500


def test_arithmetic_large_space_is_sampled_not_enumerated():
    task = ArithmeticTask(seed=0, min_operand=100, max_operand=999, eval_size=100, train_size=2000)
    assert len(task.train) == 2000
    assert all(100 <= int(x) <= 999 for s in task.eval for x in s.prompt[:-1].split("+"))


def test_arithmetic_max_answer_chars():
    assert ArithmeticTask().max_answer_chars == 3  # 99+99=198
    assert ArithmeticTask(operators=("-",), eval_size=10).max_answer_chars == 3  # 10-99=-89
    assert ArithmeticTask(min_operand=0, max_operand=9, eval_size=1).max_answer_chars == 2  # 9+9=18
    assert ArithmeticTask(operators=("*",), eval_size=10).max_answer_chars == 4  # 99*99=9801


@pytest.mark.parametrize(
    "kwargs",
    [{"operators": ("/",)}, {"operators": ()}, {"min_operand": 5, "max_operand": 4}, {"eval_size": 0},
     {"eval_size": 811}, {"train_size": 7291}, {"holdout_fraction": 1.0}, {"min_operand": -1},
     {"answer_format": "boxed"}],
)
def test_arithmetic_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="ArithmeticTask"):
        ArithmeticTask(**kwargs)


def test_arithmetic_prompt_template_words_the_question_and_keeps_the_problems():
    plain = ArithmeticTask(min_operand=1, max_operand=9, eval_size=5)
    worded = ArithmeticTask(min_operand=1, max_operand=9, eval_size=5,
                            prompt_template="What is {a} {op} {b}? Answer with the number only.")
    assert [s.id for s in worded.eval] == [s.id for s in plain.eval]
    first = worded.eval[0]
    a, b = first.id.split("+")
    assert first.prompt == f"What is {a} + {b}? Answer with the number only."
    assert first.reference == plain.eval[0].reference == str(int(a) + int(b))


@pytest.mark.parametrize(
    "completion, reward",
    [("122", 1.0), ("122<eos>", 1.0), ("122<eos>7", 1.0), ("122\n5+5=10", 1.0), (" 122 ", 1.0),
     ("1220", 0.0), ("0122", 0.0), ("122.0", 0.0), ("12 2", 0.0), ("+122", 0.0), ("", 0.0), ("<eos>122", 0.0),
     ("121", 0.0), ("122=", 0.0)],
)
def test_arithmetic_score_is_exact_match_up_to_end_marker(completion, reward):
    sample = TaskSample(id="37+85", prompt="37+85=", reference="122")
    assert ArithmeticTask(eval_size=10).score(completion, sample) == reward


@pytest.mark.parametrize(
    "completion, reward",
    [("The answer is 12.", 1.0), ("7 + 5 = 12", 1.0), ("12", 1.0), ("So:\n7 + 5 = 12\n", 1.0),
     ("12<eos>then 13", 1.0), ("12 is wrong, it is 13", 0.0), ("The answer is 12.5", 0.0), ("120", 0.0),
     ("To add 7 and 5, first", 0.0), ("", 0.0), ("twelve", 0.0)],
)
def test_arithmetic_last_number_format_scores_the_final_integer_of_a_sentence(completion, reward):
    task = ArithmeticTask(min_operand=1, max_operand=9, eval_size=5, answer_format="last_number")
    assert task.score(completion, TaskSample(id="7+5", prompt="What is 7 + 5?", reference="12")) == reward


def test_arithmetic_score_negative_reference():
    task = ArithmeticTask(operators=("-",), eval_size=10)
    sample = TaskSample(id="3-10", prompt="3-10=", reference="-7")
    assert task.score("-7", sample) == 1.0 and task.score("7", sample) == 0.0 and task.score("- 7", sample) == 0.0
