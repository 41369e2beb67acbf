"""The per-sample built-in rewards score hand-worked completions as their docstrings say.

code_tests runs the real sandbox (no fakes): on a host where the isolation probe fails, its tests fail with
the probe's explanation rather than passing vacuously.
"""

import pickle

import pytest

from areal.reward_terms import soft_overlong_penalty
from rollouts.envs.sandbox import probe_isolation
from rollouts.rewards.base import RewardInput, RewardSettings
from rollouts.rewards.builtin import PER_SAMPLE_BUILTINS, final_prediction, last_boxed
from rollouts.tasks.base import TaskSample

SETTINGS = RewardSettings(max_new_tokens=100, overlong_buffer=20, code_wall_seconds=2.0)
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


def make(name: str, settings: RewardSettings = SETTINGS):
    return PER_SAMPLE_BUILTINS[name](settings)


def sample(reference: str = "", **columns) -> TaskSample:
    return TaskSample(id="row-0", prompt="q", reference=reference, columns=columns)


def math_score(completion: str, reference: str):
    return make("math_verify")(RewardInput(completion), sample(reference))


@pytest.mark.parametrize("completion", [
    "72", "$72", "72.0", "\\boxed{72}", "The answer is 72.", "So we get \\boxed{72.}",
    "First 10, then 20, finally \\boxed{3} ... wait, no: \\boxed{72}",  # the last box counts
    "Halfway: 36.\n#### 72",
    "<think>maybe 71? \\boxed{71}</think>The answer is \\boxed{72}",  # only after the last </think>
    "It is \\boxed{72}<eos>\\boxed{5}",  # nothing after <eos> is read
])
def test_math_verify_finds_the_final_number(completion):
    assert math_score(completion, "72") == 1.0


@pytest.mark.parametrize("completion, reference", [
    ("\\boxed{\\frac{1}{3}}", "1/3"),
    ("$1/3$", "\\frac{1}{3}"),
    ("\\boxed{\\boxed{\\frac{2}{6}}}", "1/3"),  # nested boxes and braces
    ("\\boxed{-\\frac{1}{2}}", "-0.5"),
    ("so x = -7", "-7"),
    ("#### 1,234", "Add them up: 1,000 + 234 = 1,234.\n#### 1,234"),  # GSM8K's answer column
    ("\\boxed{1234}", "Add them up.\n#### 1,234"),
])
def test_math_verify_matches_equal_values_in_other_forms(completion, reference):
    assert math_score(completion, reference) == 1.0


@pytest.mark.parametrize("completion, reference", [
    ("\\boxed{73}", "72"),
    ("#### 5", "-5"),
    ("\\boxed{\\frac{1}{3}}", "0.333"),
    ("<think>it is 72</think>I give up", "72"),  # the thinking's number is not the answer
    ("", "72"),
    ("\\boxed{}", "72"),
    ("\\boxed{72} then more <eos>", "71"),
])
def test_math_verify_scores_a_wrong_or_missing_answer_zero(completion, reference):
    assert math_score(completion, reference) == 0.0


@pytest.mark.parametrize("reference", ["yes", "\\sqrt{2}", ""])
def test_math_verify_does_not_apply_when_the_reference_does_not_parse(reference):
    assert math_score("\\boxed{72}", reference) is None


def test_last_boxed_skips_a_box_the_token_budget_cut_open():
    assert last_boxed("\\boxed{\\frac{1}{2}} and \\boxed{\\frac{3") == "\\frac{1}{2}"
    assert last_boxed("no box here") is None


def test_final_prediction_prefers_the_box_over_the_gsm8k_mark():
    assert final_prediction("#### 5 but \\boxed{6}") == "\\boxed{6}"
    assert final_prediction("a\n#### 5 ") == "5"


@pytest.mark.parametrize("completion, reward", [
    ("<think>2 + 2 is 4</think>4", 1.0),
    ("\n  <think>\nreason\n</think>\nThe answer is 4.<eos>junk <think>", 1.0),  # after <eos> is not read
    ("<think>reason</think>", 0.0),  # no answer
    ("<think>reason</think>  \n", 0.0),
    ("<think> \n</think>4", 0.0),  # no thinking
    ("4", 0.0),
    ("Sure. <think>reason</think>4", 0.0),  # text before the block
    ("<think>a</think><think>b</think>4", 0.0),  # two blocks
    ("<think>a <think> b</think>4", 0.0),
    ("<think>a</think>4</think>", 0.0),
    ("</think><think>a</think>4", 0.0),
])
def test_think_format_wants_one_thinking_block_then_an_answer(completion, reward):
    assert make("think_format")(RewardInput(completion), sample()) == reward


@pytest.mark.parametrize("length, penalty", [
    (0, 0.0), (80, 0.0),  # up to Lmax - Lc = 100 - 20: free
    (81, -1 / 20), (90, -10 / 20),  # the ramp
    (100, -1.0), (101, -1.0), (500, -1.0),  # at the budget and beyond
])
def test_soft_overlong_ramps_over_the_buffer_before_the_budget(length, penalty):
    reward = make("soft_overlong")
    assert reward(RewardInput("x", token_ids=tuple(range(length))), sample()) == penalty
    assert soft_overlong_penalty(length, max_len=100, buffer=20) == penalty


def test_soft_overlong_with_a_buffer_of_the_whole_budget():
    assert soft_overlong_penalty(0, max_len=4, buffer=4) == 0.0
    assert soft_overlong_penalty(1, max_len=4, buffer=4) == -0.25


@pytest.mark.parametrize("buffer", [0, 101])
def test_soft_overlong_rejects_a_buffer_outside_the_budget(buffer):
    with pytest.raises(ValueError, match="task.overlong_buffer"):
        make("soft_overlong", RewardSettings(max_new_tokens=100, overlong_buffer=buffer))
    with pytest.raises(ValueError, match="buffer"):
        soft_overlong_penalty(5, max_len=100, buffer=buffer)


def code_score(completion: str, **columns) -> float:
    return make("code_tests")(RewardInput(completion), sample(**columns))


def test_code_tests_runs_in_the_isolated_sandbox_here():
    report = probe_isolation()
    assert report.ok, report.explain()


def test_code_tests_passes_a_correct_program():
    assert code_score("def add(a, b):\n    return a + b\n<eos>garbage(", tests=TESTS) == 1.0


def test_code_tests_fails_a_wrong_program():
    assert code_score("def add(a, b):\n    return a - b\n", tests=TESTS) == 0.0


def test_code_tests_takes_the_last_fenced_block_and_ignores_the_prose():
    completion = ("Here is a first try:\n```python\ndef add(a, b):\n    return 0\n```\n"
                  "Better:\n```python\ndef add(a, b):\n    return a + b\n```\nThis adds two numbers.")
    assert code_score(completion, tests=TESTS) == 1.0


def test_code_tests_reads_the_configured_column():
    reward = make("code_tests", RewardSettings(tests_key="asserts", code_wall_seconds=2.0))
    program = RewardInput("```\ndef add(a, b):\n    return a + b\n```")
    assert reward(program, sample(asserts=TESTS)) == 1.0


@pytest.mark.parametrize("columns", [{}, {"tests": None}, {"tests": ["assert True"]}])
def test_code_tests_names_the_tests_column_when_it_is_missing_or_not_text(columns):
    with pytest.raises(ValueError, match="'tests'.*task.tests_key"):
        code_score("def add(a, b):\n    return a + b\n", **columns)


@pytest.mark.parametrize("name", sorted(PER_SAMPLE_BUILTINS))
def test_every_builtin_survives_pickling_before_and_after_use(name):
    reward = make(name)
    copy = pickle.loads(pickle.dumps(reward))
    assert type(copy) is type(reward) and copy.settings == reward.settings
    output, row = RewardInput("<think>t</think>```\ndef add(a, b):\n    return a + b\n```"), sample("1", tests=TESTS)
    first = reward(output, row)
    assert pickle.loads(pickle.dumps(reward))(output, row) == first


def test_think_format_counts_what_the_prompt_prefilled_of_the_answer():
    from rollouts.rewards.builtin import ThinkFormatReward

    prefilled = TaskSample("p", ({"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>"}),
                           "4")
    reward = ThinkFormatReward(RewardSettings())
    assert reward(RewardInput("2 and 2 make 4.</think> 4"), prefilled) == 1.0
    assert reward(RewardInput("2 and 2 make 4. 4"), prefilled) == 0.0  # never closed
    assert reward(RewardInput("<think>again</think> 4"), prefilled) == 0.0  # a second block
