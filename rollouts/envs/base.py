"""The environment interface for multi-turn episodes, and tools an environment can offer (docs/agents.md)."""

from __future__ import annotations

import abc
import inspect
import json
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import jsonschema

from rollouts.tasks.base import TaskSample

# lowercase so every tool-call syntax, including the character model's compact one, can spell the name
TOOL_NAME = re.compile(r"[a-z][a-z0-9_]*")
JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


@dataclass(frozen=True)
class StepResult:
    """What the environment answers to one policy turn."""

    observation: str = ""
    """Text appended to the transcript after the action ("" = nothing); it is not trained on."""
    reward: float = 0.0
    """This step's reward; the episode's reward is the sum over its steps."""
    done: bool = False
    """True ends the episode: no further policy turn."""
    info: dict = field(default_factory=dict)
    """JSON-able details, e.g. ``{"tool": "calculator", "valid": True}``."""

    def __post_init__(self):
        if not math.isfinite(self.reward):
            raise ValueError(f"StepResult.reward: got {self.reward!r}, expected a finite number")
        # it crosses a process boundary and ends up in metrics: fail in the author's step(), not downstream
        try:
            json.dumps(self.info)
        except (TypeError, ValueError) as e:
            raise ValueError(f"StepResult.info: must be JSON-able, got {self.info!r} ({e})") from None


class Environment(abc.ABC):
    """One instance per episode; lives in an environment worker process; step() may be slow or fail."""

    stop: tuple[str, ...] = ()
    """Strings that end a policy turn: the engine stops generating there, and the action handed to ``step()``
    ends with the stop string when it stopped there."""

    @abc.abstractmethod
    def reset(self, sample: TaskSample) -> str:
        """The text of the episode's first prompt (the task prompt, plus tool descriptions for a chat model)."""

    @abc.abstractmethod
    def step(self, action: str) -> StepResult:
        """Answer one policy turn (the text generated since the last observation)."""

    def close(self) -> None:
        """Release what the episode held (processes, files); called once, after the last step or a failure."""


class ToolError(Exception):
    """A tool call failed because of the call (bad arguments, division by zero): the model is told why."""


class ToolUnavailableError(RuntimeError):
    """A tool's own machinery failed (not the call): the episode fails instead of blaming the model."""


@dataclass(frozen=True)
class Tool:
    """A named function the policy may call, with a JSON schema of its arguments object."""

    name: str
    description: str
    parameters: dict
    """JSON schema of the arguments object (``{"type": "object", "properties": ..., "required": ...}``)."""
    fn: Callable[..., Any]
    """Called with the validated arguments as keywords; its result is converted with ``str()``."""

    def __post_init__(self):
        if not TOOL_NAME.fullmatch(self.name):
            raise ValueError(f"Tool.name: got {self.name!r}, expected lowercase letters, digits and '_' "
                             f"starting with a letter (every tool-call syntax can spell those)")
        if self.parameters.get("type") != "object":
            raise ValueError(f"Tool {self.name!r}: parameters must be an object schema, got {self.parameters!r}")
        try:
            jsonschema.Draft202012Validator.check_schema(self.parameters)
        except jsonschema.SchemaError as e:
            raise ValueError(f"Tool {self.name!r}: parameters is no valid JSON schema: {e.message}") from None

    @property
    def text_parameter(self) -> str | None:
        """The parameter that a bare text argument fills: the only required one, if it is a string."""
        required = self.parameters.get("required", [])
        if len(required) != 1:
            return None
        prop = self.parameters.get("properties", {}).get(required[0], {})
        return required[0] if prop.get("type") == "string" else None

    def call(self, arguments: dict | str) -> str:
        """Validate ``arguments`` (a dict, or one text for ``text_parameter``) and run the tool.

        Raises ``ToolError`` for arguments the schema refuses; whatever ``fn`` raises passes through.
        """
        if isinstance(arguments, str):
            if self.text_parameter is None:
                raise ToolError(f"tool {self.name!r} takes named arguments {self._signature()}, not one text")
            arguments = {self.text_parameter: arguments}
        validator = jsonschema.Draft202012Validator(self.parameters)
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
        if error is not None:
            where = "".join(f"[{p!r}]" for p in error.absolute_path)
            raise ToolError(f"tool {self.name!r}: bad arguments{' ' + where if where else ''}: {error.message}; "
                            f"expected {self._signature()}")
        result = self.fn(**_coerce_integers(arguments, self.parameters))
        return result if isinstance(result, str) else str(result)

    def _signature(self) -> str:
        props = self.parameters.get("properties", {})
        required = set(self.parameters.get("required", []))
        parts = [f"{k}: {v.get('type', 'any')}{'' if k in required else ' (optional)'}" for k, v in props.items()]
        return "{" + ", ".join(parts) + "}"

    @classmethod
    def from_function(cls, fn: Callable[..., Any], name: str | None = None, description: str | None = None) -> Tool:
        """A tool whose schema comes from ``fn``'s annotated parameters (str, int, float, bool).

        The description defaults to the docstring's first paragraph; ``Annotated[str, "what it is"]`` describes
        a parameter; parameters with defaults are optional.
        """
        name = name or fn.__name__
        doc = inspect.getdoc(fn) or ""
        description = description if description is not None else doc.split("\n\n", 1)[0].replace("\n", " ")
        if not description:
            raise ValueError(f"Tool.from_function({name!r}): give a description or a docstring")
        hints = typing.get_type_hints(fn, include_extras=True)
        properties, required = {}, []
        for param in inspect.signature(fn).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
                raise TypeError(f"Tool.from_function({name!r}): parameter {param.name!r} must be passable by keyword")
            properties[param.name] = _json_type(name, param.name, hints.get(param.name))
            if param.default is param.empty:
                required.append(param.name)
        schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
        return cls(name=name, description=description, parameters=schema, fn=fn)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None):
    """Decorator form of ``Tool.from_function``: ``@tool`` or ``@tool(name="calc", description=...)``."""
    if fn is None:
        return lambda f: Tool.from_function(f, name=name, description=description)
    return Tool.from_function(fn, name=name, description=description)


def _json_type(tool_name: str, param: str, hint: Any) -> dict:
    schema: dict = {}
    if typing.get_origin(hint) is typing.Annotated:
        hint, *extras = typing.get_args(hint)
        schema.update(description=" ".join(str(e) for e in extras if isinstance(e, str)))
    if hint not in JSON_TYPES:
        raise TypeError(f"Tool.from_function({tool_name!r}): parameter {param!r} is annotated {hint!r}, "
                        f"expected one of {[t.__name__ for t in JSON_TYPES]}")
    return {"type": JSON_TYPES[hint], **{k: v for k, v in schema.items() if v}}


def _coerce_integers(arguments: dict, schema: dict) -> dict:
    """JSON schema counts 3.0 as an integer; the function was promised an int."""
    props = schema.get("properties", {})
    return {k: int(v) if props.get(k, {}).get("type") == "integer" and isinstance(v, float) else v
            for k, v in arguments.items()}
