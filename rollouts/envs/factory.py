"""Build the environments ``env.*`` names: a maker of one instance per episode, for any process to call."""

from __future__ import annotations

from areal.config import TrainConfig
from rollouts.envs.pool import MakeEnvironment


def environment_maker(cfg: TrainConfig, model_path: str) -> MakeEnvironment:
    """A callable that makes a fresh environment for one episode. Called once per process that hosts
    environments (the task, the tools and the sandbox are built here once and shared by its episodes)."""
    from rollouts.envs.tool_calls import JsonToolCalls, TaggedToolCalls
    from rollouts.envs.tool_env import ToolEnvironment
    from rollouts.tasks.factory import make_task

    if cfg.env.type not in ("tools", "custom"):
        raise ValueError(f"config error: env.type = {cfg.env.type!r} has no environments; use tools or custom")
    task = make_task(cfg, model_path)
    if cfg.env.type == "custom":
        factory = import_factory(cfg.env.factory)
        return lambda: factory(task)
    tools = [make_tool(name, cfg) for name in cfg.env.tools]
    syntax = TaggedToolCalls() if cfg.env.tool_syntax == "tagged" else JsonToolCalls()
    # chat models read the tools' descriptions in the prompt; the tiny model learned its one tool in its warm start
    describe = cfg.env.tool_syntax == "json"

    def make() -> ToolEnvironment:
        return ToolEnvironment(task, tools, syntax, cfg.env.max_tool_calls, describe_tools=describe)

    return make


def make_tool(name: str, cfg: TrainConfig):
    if name == "calculator":
        from rollouts.envs.calculator import calculator_tool

        return calculator_tool(name)
    if name == "python":
        from rollouts.envs.python_tool import python_tool
        from rollouts.envs.sandbox import Sandbox

        return python_tool(Sandbox(insecure=cfg.env.sandbox_insecure), name)
    raise ValueError(f"config error: env.tools names {name!r}; expected calculator or python")


def import_factory(spec: str):
    """The callable ``env.factory`` names ("module:name")."""
    import importlib

    module_name, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"config error: env.factory = {spec!r} cannot be imported ({type(exc).__name__}: {exc}); "
                         "name a module on the Python path and a callable in it, e.g. my_envs:GuessingGame") from exc
