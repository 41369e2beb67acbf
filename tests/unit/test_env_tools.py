"""Environments and tools for multi-turn episodes: the calculator, tool-call syntaxes, tool schemas, the
tool environment, and the Python tool and code reward against the real sandbox."""

import asyncio
import json
import time
from typing import Annotated

import pytest

from rollouts.envs.base import StepResult, Tool, ToolError, ToolUnavailableError, tool
from rollouts.envs.calculator import CalculatorError, CalculatorLimits, calculate, calculator_tool
from rollouts.envs.code_reward import score_with_tests
from rollouts.envs.python_tool import python_tool, run_python
from rollouts.envs.sandbox import Sandbox, SandboxLimits, probe_isolation
from rollouts.envs.tool_calls import JsonToolCalls, TaggedToolCalls, ToolCall, ToolCallError
from rollouts.envs.tool_env import ToolEnvironment
from rollouts.tasks.base import ScoredTask, TaskSample


class ExactTask(ScoredTask):
    """Reward 1 for the reference, stripped; enough to score a final answer."""

    def __init__(self):
        super().__init__(train=[TaskSample("a", "347*28=", "9716")], eval=[TaskSample("b", "2+2=", "4")])

    def score(self, completion, sample):
        return 1.0 if completion.strip() == sample.reference else 0.0


SAMPLE = ExactTask().train[0]


# calculator


@pytest.mark.parametrize("expression, value", [
    ("347*28", "9716"), ("0.1+0.2", "0.3"), ("7//2", "3"), ("-7//2", "-4"), ("-7 % 3", "2"), ("2**-3", "0.125"),
    ("1/3", "0.333333333333333"), ("-(2+3)*4", "-20"), ("1.5*2", "3"), ("2**0.5", "1.4142135623731"),
    ("10**99", "1" + "0" * 99), ("(1+2)*(3+4)/7", "3"), ("1e3", "1000"), ("--1", "1"),
])
def test_calculator_is_exact(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize("expression, why", [
    ("__import__('os')", "function calls"), ("().__class__", "attribute access"), ("x + 1", "names"),
    ("9**9**9", "too large"), ("10**10000", "too large"), ("10**100", "too large"), ("1e999999999", "too large"),
    ("2**-1000", "too precise"), ("1" * 201, "too long"), ("1/0", "division by zero"), ("5 % 0", "division by zero"),
    ("0**-1", "division by zero"), ("2^3", "**"), ("'a'", "not a number"), ("True", "not a number"),
    ("lambda: 1", "unsupported syntax"), ("1 < 2", "unsupported operator"), ("1 +", "not an arithmetic"),
    ("(-8)**(1/3)", "not a real number"), ("", "empty"),
])
def test_calculator_refuses_abuse_quickly_and_says_why(expression, why):
    start = time.monotonic()
    with pytest.raises(CalculatorError, match=why.replace("*", r"\*")):
        calculate(expression)
    assert time.monotonic() - start < 0.5


def test_calculator_limits_are_configurable_and_checked():
    assert calculate("10**10", CalculatorLimits(max_digits=11)) == "10000000000"
    with pytest.raises(CalculatorError, match="more than 10 digits"):
        calculate("10**10", CalculatorLimits(max_digits=10))
    with pytest.raises(ValueError, match="CalculatorLimits.max_length"):
        CalculatorLimits(max_length=0)


def test_calculator_tool_takes_an_expression_by_name_or_as_text():
    calc = calculator_tool(name="calc")
    assert calc.call({"expression": "6*7"}) == "42" and calc.call("6*7") == "42"
    with pytest.raises(ToolError, match="expression"):
        calc.call({"expression": 42})
    with pytest.raises(CalculatorError, match="division by zero"):
        calc.call("1/0")


# tool-call syntaxes


def test_json_tool_calls_parse_a_call_after_some_text():
    syntax = JsonToolCalls()
    action = 'Let me compute.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "347*28"}}\n</tool_call>'
    assert syntax.parse(action) == ToolCall("calculator", {"expression": "347*28"})
    assert syntax.stop == ("</tool_call>",)
    assert syntax.parse("The answer is 9716.") is None
    assert syntax.format_result("9716") == "\n<tool_response>\n9716\n</tool_response>\n"


@pytest.mark.parametrize("action, why", [
    ("<tool_call>{'name': 'x'}</tool_call>", "not valid JSON"),
    ('<tool_call>{"name": "calculator"', "never closed"),
    ('<tool_call>{"arguments": {}}</tool_call>', "name"),
    ('<tool_call>{"name": "calculator", "arguments": "1+1"}</tool_call>', "must be a JSON object"),
    ('<tool_call>{"name": "a"}</tool_call><tool_call>{"name": "b"}</tool_call>', "one"),
    ("oops</tool_call>", "one"),
])
def test_json_tool_calls_explain_malformed_calls(action, why):
    with pytest.raises(ToolCallError, match=why):
        JsonToolCalls().parse(action)


def test_json_tool_calls_describe_the_tools_with_their_schemas():
    text = JsonToolCalls().describe([calculator_tool()])
    specs = text.split("<tools>\n")[1].split("\n</tools>")[0]
    assert json.loads(specs)["function"]["parameters"]["required"] == ["expression"]
    assert "<tool_call>" in text


def test_tagged_tool_calls_parse_the_compact_syntax():
    syntax = TaggedToolCalls()
    assert syntax.stop == ("]",)
    assert syntax.parse("[calc 347*28]") == ToolCall("calc", "347*28")
    assert syntax.parse("347*28=[calc 347*28]") == ToolCall("calc", "347*28")
    assert syntax.parse("[calc 1+2]\n") == ToolCall("calc", "1+2")
    assert syntax.parse("[time]") == ToolCall("time", {})
    assert syntax.parse("9716") is None and syntax.parse("[calc 1") is None
    for malformed in ("9716]", "[Calc 1]", "[ 1+2]", "[1,2]"):
        with pytest.raises(ToolCallError):
            syntax.parse(malformed)


def test_tagged_results_stay_inside_the_tiny_models_vocabulary():
    from launch.tiny_model import build_char_tokenizer

    syntax = TaggedToolCalls()
    assert syntax.format_result("9716") == "{9716}"
    assert syntax.format_result("a\nb{c}\té\n") == "{a b?c? ?}"
    tokenizer = build_char_tokenizer()
    transcript = "347*28=[calc 347*28]" + syntax.format_result("9716\nerror: {x} é") + "9716"
    assert tokenizer.unk_token_id not in tokenizer(transcript, add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="distinct single characters"):
        TaggedToolCalls(result_open="\n")


# tools


def test_from_function_derives_the_schema_from_annotations():
    def search(query: Annotated[str, "words to look for"], limit: int, exact: bool = False, boost: float = 1.0):
        """Search the notes.

        Longer text that is not the description."""
        return f"{query}:{limit}:{exact}:{boost}"

    t = Tool.from_function(search)
    assert (t.name, t.description) == ("search", "Search the notes.")
    assert t.parameters == {
        "type": "object", "additionalProperties": False, "required": ["query", "limit"],
        "properties": {"query": {"type": "string", "description": "words to look for"}, "limit": {"type": "integer"},
                       "exact": {"type": "boolean"}, "boost": {"type": "number"}}}
    assert t.call({"query": "x", "limit": 3.0}) == "x:3:False:1.0"  # 3.0 is a JSON integer; fn gets int
    assert t.text_parameter is None  # two required parameters: a bare text cannot say which


@pytest.mark.parametrize("arguments, why", [
    ({"limit": 1}, "'query' is a required property"),
    ({"query": "x", "limit": "1"}, r"\['limit'\].*not of type 'integer'"),
    ({"query": "x", "limit": True}, "not of type 'integer'"),
    ({"query": "x", "limit": 1, "page": 2}, "'page' was unexpected"),
])
def test_tool_call_refuses_bad_arguments_naming_the_problem(arguments, why):
    @tool(name="search", description="Search.")
    def search_fn(query: str, limit: int) -> str:
        return query

    with pytest.raises(ToolError, match=why):
        search_fn.call(arguments)


def test_tool_definitions_are_checked_when_made():
    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    assert add.call({"a": 2, "b": 3}) == "5" and add.text_parameter is None
    with pytest.raises(ToolError, match="named arguments"):
        add.call("2 3")
    with pytest.raises(TypeError, match="'items' is annotated"):
        Tool.from_function(lambda items: "", name="f", description="d")
    with pytest.raises(ValueError, match="docstring"):
        Tool.from_function(lambda: "", name="f")
    with pytest.raises(ValueError, match="Tool.name"):
        Tool("Bad Name", "d", {"type": "object"}, lambda: "")
    with pytest.raises(ValueError, match="no valid JSON schema"):
        Tool("bad", "d", {"type": "object", "properties": 3}, lambda: "")


def test_step_results_must_be_json_able_and_finite():
    assert StepResult().info == {} and not StepResult().done
    with pytest.raises(ValueError, match="JSON-able"):
        StepResult(info={"tool": object()})
    with pytest.raises(ValueError, match="finite"):
        StepResult(reward=float("nan"))


# the tool environment


def make_env(max_tool_calls: int = 3, tools=None, syntax=None, **kwargs) -> ToolEnvironment:
    tools = [calculator_tool(name="calc")] if tools is None else tools
    return ToolEnvironment(ExactTask(), tools, syntax or TaggedToolCalls(), max_tool_calls, **kwargs)


def test_an_episode_calls_a_tool_then_answers():
    env = make_env()
    assert env.stop == ("]",)
    assert env.reset(SAMPLE) == "347*28="
    step = env.step("[calc 347*28]")
    assert step == StepResult("{9716}", 0.0, False, {"tool": "calc", "valid": True, "tool_calls": 1,
                                                     "valid_tool_calls": 1})
    final = env.step("9716")
    assert (final.reward, final.done, final.observation) == (1.0, True, "")
    assert final.info == {"final": True, "tool_calls": 1, "valid_tool_calls": 1}
    with pytest.raises(RuntimeError, match="episode is done"):
        env.step("9716")
    env.close()


def test_failed_calls_become_error_observations_and_count():
    def boom(text: str) -> str:
        raise RuntimeError("disk on fire")

    env = make_env(tools=[calculator_tool(name="calc"), Tool.from_function(boom, description="Fails.")])
    env.reset(SAMPLE)
    unknown = env.step("[search cats]")
    assert unknown.observation.startswith("{error: unknown tool 'search'; available: calc, boom")
    assert unknown.info["valid"] is False and unknown.info["tool"] == "search" and not unknown.done
    raised = env.step("[boom now]")
    assert raised.observation == "{error: RuntimeError: disk on fire}" and raised.info["error"].startswith("Runtime")
    bad = env.step("[calc 1/0]")
    assert bad.observation == "{error: division by zero}"
    assert bad.info == {"tool": "calc", "valid": False, "error": "division by zero", "tool_calls": 3,
                        "valid_tool_calls": 0}


def test_malformed_calls_are_answered_not_raised():
    env = make_env()
    env.reset(SAMPLE)
    step = env.step("9716]")
    assert step.info["tool"] is None and step.info["valid"] is False and "malformed" in step.observation


def test_the_call_past_the_limit_ends_the_episode_scored():
    env = make_env(max_tool_calls=1)
    env.reset(SAMPLE)
    assert env.step("[calc 1+1]").info["valid"]
    last = env.step("[calc 2+2]")
    assert (last.done, last.reward, last.observation) == (True, 0.0, "")
    assert last.info == {"final": False, "limit": "max_tool_calls", "tool_calls": 2, "valid_tool_calls": 1}
    env.reset(SAMPLE)  # a reset starts the counts afresh
    assert env.step("[calc 1+1]").info["tool_calls"] == 1


def test_an_unavailable_tool_fails_the_episode_instead_of_blaming_the_model():
    def broken(code: str) -> str:
        raise ToolUnavailableError("sandbox is down")

    env = make_env(tools=[Tool.from_function(broken, description="Down.")])
    env.reset(SAMPLE)
    with pytest.raises(ToolUnavailableError):
        env.step("[broken x]")


def test_json_episode_describes_tools_and_reports_bad_arguments():
    env = make_env(syntax=JsonToolCalls(), describe_tools=True)
    prompt = env.reset(SAMPLE)
    assert prompt.startswith("# Tools") and prompt.endswith("\n\n347*28=") and '"name": "calc"' in prompt
    step = env.step('<tool_call>{"name": "calc", "arguments": {"expr": "1"}}</tool_call>')
    assert step.observation.startswith("\n<tool_response>\nerror: tool 'calc': bad arguments")
    assert env.step('<tool_call>{"name": "calc", "arguments": {"expression": "347*28"}}</tool_call>').observation \
        == "\n<tool_response>\n9716\n</tool_response>\n"
    assert env.step("9716").reward == 1.0


def test_environment_construction_is_checked():
    with pytest.raises(ValueError, match="unique"):
        make_env(tools=[calculator_tool(), calculator_tool()])
    with pytest.raises(ValueError, match="max_tool_calls"):
        make_env(max_tool_calls=-1)
    with pytest.raises(RuntimeError, match="reset"):
        make_env().step("1")


# the python tool and the code reward, in the real sandbox

LIMITS = SandboxLimits(cpu_seconds=1, wall_seconds=2.0, memory_mb=128, max_processes=16, max_output_bytes=10_000)
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    report = probe_isolation()
    if not report.ok:
        pytest.skip(f"the sandbox's isolation probe fails on this host: {report.explain()}")
    return Sandbox(LIMITS)


def test_python_tool_answers_with_stdout_or_the_failure(sandbox):
    assert run_python("print(6*7)", sandbox) == "42\n"
    assert run_python("1/0", sandbox) == "error: ZeroDivisionError: division by zero"
    assert run_python("print('partial')\nraise SystemExit(3)", sandbox) == "partial\nerror: exit code 3"
    assert run_python("print('a' * 100)", sandbox, max_output_chars=10) == "aaaaaaa..."
    assert run_python("print(1", sandbox).startswith("error: SyntaxError")
    assert run_python("while True: pass", Sandbox(SandboxLimits(wall_seconds=0.3))) == "timeout"


def test_python_tool_in_an_episode(sandbox):
    env = make_env(tools=[python_tool(sandbox)], syntax=JsonToolCalls())
    env.reset(SAMPLE)
    step = env.step(json.dumps({"name": "python", "arguments": {"code": "print(347*28)"}}).join(
        ["<tool_call>", "</tool_call>"]))
    assert step.observation == "\n<tool_response>\n9716\n\n</tool_response>\n" and step.info["valid"]


def test_python_tool_refuses_to_run_inside_an_event_loop(sandbox):
    async def inside():
        return run_python("print(1)", sandbox)

    with pytest.raises(ToolUnavailableError, match="event loop"):
        asyncio.run(inside())


@pytest.mark.parametrize("program, reward", [
    ("def add(a, b):\n    return a + b\n", 1.0),
    ("def add(a, b):\n    return a + b\nif __name__ == '__main__':\n    print(add(int(input()), 1))\n", 1.0),
    ("def add(a, b):\n    return a - b\n", 0.0),
    ("def add(a, b) return a + b", 0.0),
    ("import sys\nsys.exit(0)\n", 0.0),
    ("import os\nos._exit(0)\n", 0.0),
    ("import sys\nprint(sys.stdin.read())\n", 0.0),
    ("raise KeyboardInterrupt\n", 0.0),
])
def test_code_reward_counts_only_tests_that_ran_to_the_end(sandbox, program, reward):
    assert score_with_tests(program, TESTS, sandbox) == reward


def test_code_reward_applies_the_limits_given(sandbox):
    slow = "import time\ntime.sleep(0.5)\ndef add(a, b):\n    return a + b\n"
    assert score_with_tests(slow, TESTS, sandbox) == 1.0
    assert score_with_tests(slow, TESTS, sandbox, SandboxLimits(wall_seconds=0.3)) == 0.0
