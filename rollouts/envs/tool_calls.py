"""How a tool call is written in the policy's text, and how its result is written back (docs/agents.md).

Two syntaxes ship: ``JsonToolCalls`` for chat models trained on Hermes/Qwen-style calls, and
``TaggedToolCalls``, a compact one the project's character-level tiny model can spell.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from typing import Protocol, Sequence

from rollouts.envs.base import TOOL_NAME, Tool

# The tiny model's tokens (launch/tiny_model.py, build_char_tokenizer): printable ASCII without any
# whitespace but the space. A newline is not among them, so nothing written for that model may hold one.
CHAR_VOCABULARY = frozenset(c for c in string.printable if c not in "\t\n\r\x0b\x0c")


@dataclass(frozen=True)
class ToolCall:
    """One call parsed from an action: the tool's name and its arguments (named, or one bare text)."""

    name: str
    arguments: dict | str
    """A dict of named arguments, or one text for a tool whose only required parameter is a string."""


class ToolCallError(ValueError):
    """The action tried to call a tool but the call is malformed; the message says how."""


class ToolCallSyntax(Protocol):
    """Reads tool calls out of a policy turn and writes tool results back into the transcript."""

    stop: tuple[str, ...]
    """Strings that end a turn calling a tool (the engine stops there)."""

    def parse(self, action: str) -> ToolCall | None:
        """The call that ends ``action``; None when it holds none (a final answer); ``ToolCallError`` if malformed."""

    def format_result(self, text: str) -> str:
        """The observation that carries a tool's result (or error message) into the transcript."""

    def describe(self, tools: Sequence[Tool]) -> str:
        """Instructions listing ``tools`` and how to call them, for the first prompt ("" = none)."""


@dataclass(frozen=True)
class JsonToolCalls:
    """Hermes/Qwen style: ``<tool_call>{"name": "calculator", "arguments": {"expression": "347*28"}}</tool_call>``.

    The result comes back as ``<tool_response>...</tool_response>`` on its own lines; subclass and override
    ``format_result`` (or set ``result_template``) to wrap it in a chat template's tool turn instead. Text
    after the closing tag is ignored: an engine honouring ``stop`` produces none.
    """

    open_tag: str = "<tool_call>"
    close_tag: str = "</tool_call>"
    result_template: str = "\n<tool_response>\n{text}\n</tool_response>\n"

    @property
    def stop(self) -> tuple[str, ...]:
        return (self.close_tag,)

    def parse(self, action: str) -> ToolCall | None:
        opens, closes = action.count(self.open_tag), action.count(self.close_tag)
        if opens == 0 and closes == 0:
            return None
        if opens != 1 or closes > 1:
            raise ToolCallError(f"expected one {self.open_tag}...{self.close_tag} per turn, "
                                f"found {opens} opening and {closes} closing tag(s)")
        body, closed, _ = action.split(self.open_tag, 1)[1].partition(self.close_tag)
        if not closed:
            raise ToolCallError(f"{self.open_tag} is never closed with {self.close_tag}")
        try:
            call = json.loads(body)
        except json.JSONDecodeError as e:
            raise ToolCallError(f"the tool call is not valid JSON: {e}") from None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise ToolCallError(f'expected {{"name": <tool name>, "arguments": {{...}}}}, got {body.strip()[:200]}')
        arguments = call.get("arguments", {})
        if not isinstance(arguments, dict):
            raise ToolCallError(f"arguments must be a JSON object, got {json.dumps(arguments)[:200]}")
        return ToolCall(name=call["name"], arguments=arguments)

    def format_result(self, text: str) -> str:
        return self.result_template.format(text=text)

    def describe(self, tools: Sequence[Tool]) -> str:
        specs = "\n".join(json.dumps({"type": "function", "function": {
            "name": t.name, "description": t.description, "parameters": t.parameters}}) for t in tools)
        return ("# Tools\n\nYou may call the following functions, described by JSON schemas:\n"
                f"<tools>\n{specs}\n</tools>\n\n"
                f"To call one, write a JSON object with its name and arguments inside {self.open_tag}"
                f"{self.close_tag} tags, then stop:\n{self.open_tag}\n"
                f'{{"name": <function-name>, "arguments": <args-json-object>}}\n{self.close_tag}\n'
                "Once you know the answer, write it without a tool call.")


@dataclass(frozen=True)
class TaggedToolCalls:
    """Compact calls for the character-level tiny model: ``[calc 347*28]``, answered with ``{9716}``.

    A call is ``[`` + tool name + optionally a space and one text + ``]`` at the end of the turn (``]`` is the
    stop string, so the text cannot contain ``]``). With a text, the tool's one string parameter receives
    it; without, the tool gets no arguments. A turn that does not end with ``]`` is a final answer, so a
    final answer cannot end with ``]`` either.

    The result is written back as ``{`` + text + ``}`` with nothing around it: braces never occur in a
    call, so the model can tell where the result ends. Inside the result, line breaks and tabs become
    spaces, and braces and characters outside the model's vocabulary become ``?``, so the result is a
    single run of tokens the model has.
    """

    open_bracket: str = "["
    close_bracket: str = "]"
    result_open: str = "{"
    result_close: str = "}"
    unknown_char: str = "?"

    def __post_init__(self):
        marks = [self.open_bracket, self.close_bracket, self.result_open, self.result_close, self.unknown_char]
        if any(len(m) != 1 or m not in CHAR_VOCABULARY for m in marks) or len(set(marks)) != len(marks):
            raise ValueError(f"TaggedToolCalls: the marks {marks} must be distinct single characters of the "
                             f"tiny model's vocabulary")

    @property
    def stop(self) -> tuple[str, ...]:
        return (self.close_bracket,)

    def parse(self, action: str) -> ToolCall | None:
        stripped = action.rstrip()
        if not stripped.endswith(self.close_bracket):
            return None
        start = stripped.rfind(self.open_bracket)
        if start < 0:
            raise ToolCallError(f"the turn ends with {self.close_bracket!r} but no {self.open_bracket!r} "
                                f"opens a call")
        name, space, text = stripped[start + 1:-1].partition(" ")
        if not TOOL_NAME.fullmatch(name):
            raise ToolCallError(f"{name!r} is no tool name: expected {self.open_bracket}name text"
                                f"{self.close_bracket} with a lowercase name")
        return ToolCall(name=name, arguments=text if space else {})

    def format_result(self, text: str) -> str:
        flat = re.sub(r"[\t\n\r\x0b\x0c]", " ", text.strip())
        banned = {self.result_open, self.result_close}
        safe = "".join(c if c in CHAR_VOCABULARY and c not in banned else self.unknown_char for c in flat)
        return f"{self.result_open}{safe}{self.result_close}"

    def describe(self, tools: Sequence[Tool]) -> str:
        # the tiny model learns the syntax from its warm start, not from instructions it cannot read
        return ""
