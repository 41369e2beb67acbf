"""A task answered with the help of tools: each turn either calls a tool or gives the final answer."""

from __future__ import annotations

from typing import Sequence

from rollouts.envs.base import Environment, StepResult, Tool, ToolError, ToolUnavailableError
from rollouts.envs.tool_calls import ToolCall, ToolCallError, ToolCallSyntax
from rollouts.tasks.base import Task, TaskSample


class ToolEnvironment(Environment):
    """Wraps a single-turn ``Task``: tool calls are answered with their results, the first turn without a call
    is the final answer and is scored by ``task.score``.

    A tool step earns 0 reward. A failed call (malformed, unknown tool, bad arguments, the tool raising) is
    answered with an ``error: ...`` observation so the model can recover; it still counts against
    ``max_tool_calls``. The call after the last allowed one ends the episode unanswered, scored as if it were
    the final answer. Only ``ToolUnavailableError`` (the tool's machinery failing, not the call) escapes.
    """

    def __init__(self, task: Task, tools: Sequence[Tool], syntax: ToolCallSyntax, max_tool_calls: int = 4,
                 describe_tools: bool = False):
        names = [t.name for t in tools]
        if len(set(names)) != len(names):
            raise ValueError(f"ToolEnvironment: tool names must be unique, got {names}")
        if max_tool_calls < 0:
            raise ValueError(f"ToolEnvironment: max_tool_calls must be >= 0, got {max_tool_calls}")
        self.task, self.syntax, self.max_tool_calls = task, syntax, max_tool_calls
        self.tools = {t.name: t for t in tools}
        self.describe_tools = describe_tools
        self.stop = tuple(syntax.stop)
        self._sample: TaskSample | None = None
        self._done = False
        self.tool_calls = self.valid_tool_calls = 0

    def reset(self, sample: TaskSample) -> str:
        self._sample, self._done = sample, False
        self.tool_calls = self.valid_tool_calls = 0
        preamble = self.syntax.describe(list(self.tools.values())) if self.describe_tools else ""
        return f"{preamble}\n\n{sample.prompt}" if preamble else sample.prompt

    def step(self, action: str) -> StepResult:
        if self._sample is None or self._done:
            state = "call reset() first" if self._sample is None else "the episode is done"
            raise RuntimeError(f"ToolEnvironment.step: {state}")
        try:
            call, error = self.syntax.parse(action), None
        except ToolCallError as e:
            call, error = None, f"malformed tool call: {e}"
        if call is None and error is None:
            return self._finish(action, final=True)
        self.tool_calls += 1
        if self.tool_calls > self.max_tool_calls:
            return self._finish(action, final=False)
        name = call.name if call else None
        if error is None:
            result, error = self._call(call)
        if error is not None:
            return StepResult(observation=self.syntax.format_result(f"error: {error}"),
                              info={"tool": name, "valid": False, "error": error, **self._counts()})
        self.valid_tool_calls += 1
        return StepResult(observation=self.syntax.format_result(result),
                          info={"tool": name, "valid": True, **self._counts()})

    def _call(self, call: ToolCall) -> tuple[str | None, str | None]:
        """(result, None), or (None, why the call failed)."""
        tool = self.tools.get(call.name)
        if tool is None:
            return None, f"unknown tool {call.name!r}; available: {', '.join(self.tools) or 'none'}"
        try:
            return tool.call(call.arguments), None
        except ToolUnavailableError:
            raise
        except ToolError as e:
            return None, str(e)
        except Exception as e:  # noqa: BLE001 (a tool's failure is the model's observation, recorded in info)
            return None, f"{type(e).__name__}: {e}"

    def _finish(self, action: str, final: bool) -> StepResult:
        self._done = True
        reward = float(self.task.score(action, self._sample))
        info = {"final": final, **self._counts()}
        if not final:
            info["limit"] = "max_tool_calls"
        return StepResult(reward=reward, done=True, info=info)

    def _counts(self) -> dict:
        return {"tool_calls": self.tool_calls, "valid_tool_calls": self.valid_tool_calls}
