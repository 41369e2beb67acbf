"""Multi-turn episodes against environments (``env.*``); ``env.type=none`` keeps single-turn rollouts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from areal.config._checks import require

ENV_TYPES = ("none", "tools", "custom")
TOOL_NAMES = ("calculator", "python")
TOOL_SYNTAXES = ("tagged", "json")


@dataclass
class EnvConfig:
    """Which environment an episode runs against, where it runs, and how long an episode may go on."""

    type: str = "none"
    """"none": one turn per sample (prompt, completion, reward). "tools": multi-turn episodes in which each policy
    turn either calls one of ``env.tools`` or gives the final answer, scored by the task (docs/agents.md).
    "custom": your own ``Environment``, named by ``env.factory``."""
    factory: str = ""
    """env.type=custom: "module:name" of a callable that takes the task and returns a fresh ``Environment`` for
    one episode (an Environment subclass whose constructor takes the task qualifies)."""
    tools: List[str] = field(default_factory=lambda: ["calculator"])
    """Tools offered: "calculator" (exact arithmetic, parsed, never eval'd), "python" (runs the code in the
    sandbox: docs/sandbox.md)."""
    tool_syntax: str = "tagged"
    """How a call is written: "tagged" (``[calculator 347*28]`` answered ``{9716}``; the tiny character model's)
    or "json" (``<tool_call>{"name": ..., "arguments": ...}</tool_call>``, chat models)."""
    max_turns: int = 4
    """Policy turns per episode; an episode without an answer by then scores what it has (0)."""
    max_tool_calls: int = 3
    """Tool calls per episode; the call after the last allowed one ends the episode."""
    max_episode_tokens: int = 96
    """Policy and observation tokens after the prompt, all turns together; rollout.max_new_tokens bounds one turn."""
    workers: int = 1
    """Environment worker processes per rollout worker (Ray actors on its node); 0 runs environments in threads
    of the rollout worker's own process (debugging: a hung environment cannot be stopped there)."""
    num_cpus: float = 0.0
    """Ray CPUs each environment worker reserves (tools that compute hard deserve a share)."""
    concurrency: int = 32
    """Environment steps one worker runs at once (threads)."""
    step_timeout_s: float = 30.0
    """Longest reset or step; past it the episode fails and its worker is replaced (its thread cannot be stopped)."""
    sandbox_insecure: bool = False
    """Run the python tool WITHOUT namespace isolation (limits and timeouts only). Development only."""

    def __post_init__(self):
        require(self.type in ENV_TYPES, "env.type", self.type, f"one of {', '.join(ENV_TYPES)}")
        require((self.type == "custom") == bool(self.factory), "env.factory", self.factory,
                '"module:name" of your environment with env.type=custom, and only then')
        require(not self.factory or self.factory.count(":") == 1, "env.factory", self.factory,
                '"module:name", e.g. my_envs:GuessingGame')
        require(len(self.tools) > 0 and all(t in TOOL_NAMES for t in self.tools), "env.tools", list(self.tools),
                f"a non-empty list of {', '.join(TOOL_NAMES)}")
        require(self.tool_syntax in TOOL_SYNTAXES, "env.tool_syntax", self.tool_syntax,
                f"one of {', '.join(TOOL_SYNTAXES)}")
        require(self.max_turns >= 1, "env.max_turns", self.max_turns, "an int >= 1")
        require(self.max_tool_calls >= 0, "env.max_tool_calls", self.max_tool_calls, "an int >= 0")
        require(self.max_episode_tokens >= 1, "env.max_episode_tokens", self.max_episode_tokens, "an int >= 1")
        require(self.workers >= 0, "env.workers", self.workers, "an int >= 0 (0 = threads in the rollout worker)")
        require(self.num_cpus >= 0, "env.num_cpus", self.num_cpus, "a number >= 0")
        require(self.concurrency >= 1, "env.concurrency", self.concurrency, "an int >= 1")
        require(self.step_timeout_s > 0, "env.step_timeout_s", self.step_timeout_s, "a positive number of seconds")

    @property
    def multi_turn(self) -> bool:
        return self.type != "none"
