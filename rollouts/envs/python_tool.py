"""A tool that runs model-written Python in the sandbox and answers with its output (docs/agents.md)."""

from __future__ import annotations

import asyncio

from rollouts.envs.base import Tool, ToolUnavailableError
from rollouts.envs.sandbox import Sandbox, SandboxResult, SandboxSetupError, SandboxUnavailableError

TRUNCATION_MARK = "..."
MAX_ERROR_CHARS = 200
STATUS_TEXT = {"timeout": "timeout", "memory": "memory", "output_limit": "output limit"}


def run_python(code: str, sandbox: Sandbox, max_output_chars: int = 1000) -> str:
    """Run ``code`` in ``sandbox``; its stdout, then one line saying how it failed, if it did.

    The failure line is ``timeout``, ``memory``, ``output limit`` or ``error: <last stderr line>`` (for a
    traceback, the exception); stdout is cut to ``max_output_chars`` (ending in ``...``) so the answer stays
    a bounded part of the transcript. Raises ``ToolUnavailableError`` when the sandbox itself cannot run.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        # Sandbox.run starts its own loop, which cannot nest: say so rather than blame the model's code
        raise ToolUnavailableError("run_python blocks: call it from a thread with no running event loop "
                                   "(e.g. run Environment.step via asyncio.to_thread)")
    try:
        result = sandbox.run(code)
    except (SandboxUnavailableError, SandboxSetupError) as e:
        raise ToolUnavailableError(f"python tool: the sandbox cannot run code: {e}") from e
    return describe_result(result, max_output_chars)


def describe_result(result: SandboxResult, max_output_chars: int = 1000) -> str:
    """The tool's answer for one sandbox run (see ``run_python``)."""
    output = _truncate(result.stdout, max_output_chars)
    if result.ok:
        return output
    if result.status in STATUS_TEXT:
        failure = STATUS_TEXT[result.status]
    else:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        failure = "error: " + _truncate(lines[-1].strip() if lines else f"exit code {result.exit_code}",
                                        MAX_ERROR_CHARS)
    separator = "\n" if output and not output.endswith("\n") else ""
    return output + separator + failure


def python_tool(sandbox: Sandbox, name: str = "python", max_output_chars: int = 1000) -> Tool:
    """``run_python`` as a ``Tool`` taking one ``code`` argument."""
    if max_output_chars < len(TRUNCATION_MARK):
        raise ValueError(f"python_tool: max_output_chars={max_output_chars}, expected >= {len(TRUNCATION_MARK)}")

    def run(code: str) -> str:
        return run_python(code, sandbox, max_output_chars)

    return Tool(
        name=name,
        description="Run a Python program and see what it prints (stdout). Print every value you need.",
        parameters={"type": "object", "additionalProperties": False, "required": ["code"],
                    "properties": {"code": {"type": "string", "description": "a complete Python program"}}},
        fn=run,
    )


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK
