"""A task's rewards: named functions with weights, resolved from config names and called in reward processes.

``task.rewards`` entries are resolved once per process (the driver resolves them too, before anything starts,
so a typo fails in one line):

- a built-in name (``rollouts.rewards.builtin``; ``http`` from ``rollouts.rewards.http``);
- ``package.module:function`` or ``path/to/file.py:function``: a TRL-style reward function,
  ``fn(prompts, completions, completion_ids, **columns) -> list[float | None]`` (``async def`` too), called once
  per group, with every dataset column as a keyword, ``trainer_state``, ``log_metric`` and ``log_extra`` as TRL
  passes them; for chat prompts ``prompts`` are message lists and ``completions`` are
  ``[{"role": "assistant", "content": ...}]`` lists. If the call raises, each completion is scored alone, so the
  failure stays with the completions that cause it;
- ``verl:package.module:function``: verl's ``compute_score(data_source, solution_str, ground_truth, extra_info)``
  per completion, returning a float or a dict with ``score``.

The sum is weighted (``task.reward_weights``); ``None`` counts as 0 (as in TRL); a component that raises, times
out, returns NaN or a non-number fails the sample (``areal.reward_terms.combine_rewards``).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from areal.reward_terms import weighted_sum
from rollouts.rewards.base import RewardInput, RewardSettings, RewardState
from rollouts.rewards.outcome import RewardOutcome, outcome_of
from rollouts.tasks.base import TaskSample

TRL_RESERVED = ("prompt", "completion", "completion_ids")  # columns TRL does not pass on as keywords


class RewardConfigError(ValueError):
    """A reward entry that cannot be resolved: the message names the entry, the config key and the fix."""


@dataclass(frozen=True)
class RewardSpec:
    """One component: its metric ``name``, its config ``entry`` and ``weight``; ``scorer``: a per-sample callable
    ``(output, sample) -> float`` given directly (a task's own ``score``, an image reward)."""

    name: str
    entry: str = ""
    weight: float = 1.0
    scorer: Any = None

    @property
    def batched(self) -> bool:
        """Called once per group (TRL-style functions, the http server) rather than once per completion."""
        return self.scorer is None and (self.entry == "http" or (":" in self.entry and not self.entry.startswith(
            "verl:")))


@dataclass(frozen=True)
class RewardSuite:
    """The components of one reward (training, or a held-out set with rewards of its own)."""

    specs: tuple[RewardSpec, ...]
    settings: RewardSettings = field(default_factory=RewardSettings)
    key: str = "task.rewards"  # how errors name the config entry

    @classmethod
    def of_scorer(cls, scorer, name: str) -> "RewardSuite":
        """A single per-sample scorer as a suite (a ScoredTask's ``score``)."""
        return cls((RewardSpec(name, scorer=scorer),))

    @classmethod
    def from_entries(cls, entries: list[str], weights: list[float], settings: RewardSettings,
                     key: str = "task.rewards") -> "RewardSuite":
        weights = list(weights) or [1.0] * len(entries)
        return cls(tuple(RewardSpec(name, entry, float(w)) for name, entry, w in zip(metric_names(entries), entries,
                                                                                    weights)), settings, key)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def weights(self) -> list[float]:
        return [s.weight for s in self.specs]

    def load(self) -> list["Component"]:
        """Resolve every entry to a callable component (in the process that will call them)."""
        return [load_component(spec, self.settings, self.key) for spec in self.specs]


def metric_names(entries: list[str]) -> list[str]:
    """reward/<name> of each entry: the built-in's or the function's name, made unique with _2, _3..."""
    names, seen = [], {}
    for entry in entries:
        base = entry.rsplit(":", 1)[-1].rsplit(".", 1)[-1] or "reward"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


# -- resolving entries ------------------------------------------------------------------------------
def resolve_function(reference: str, key: str) -> Callable:
    """``module:attr`` or ``file.py:attr`` as the object it names; the module is searched from the working
    directory too (a ``my_rewards.py`` beside where ``areal train`` runs)."""
    module_name, _, attr = reference.rpartition(":")
    if not module_name or not attr:
        raise RewardConfigError(f"{key}: {reference!r} is not 'package.module:function' or 'path/to/file.py:function'")
    try:
        module = _import_file(module_name) if module_name.endswith(".py") else _import_module(module_name)
    except RewardConfigError:
        raise
    except Exception as exc:
        raise RewardConfigError(f"{key}: cannot import {module_name!r} for {reference!r} ({type(exc).__name__}: "
                                f"{exc}); it must be importable from the working directory or the environment"
                                ) from None
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise RewardConfigError(f"{key}: {module_name!r} has no attribute {attr!r} (for {reference!r})")
        target = getattr(target, part)
    if not callable(target):
        raise RewardConfigError(f"{key}: {reference!r} is a {type(target).__name__}, not a function")
    return target


def _import_module(name: str):
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    return importlib.import_module(name)


def _import_file(path: str):
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise RewardConfigError(f"task.rewards: {path!r} is not a file (relative paths start at the working "
                                f"directory, {os.getcwd()})")
    name = f"areal_rewards_{hashlib.sha1(str(file).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(file.parent))  # so the file can import its neighbours
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_component(spec: RewardSpec, settings: RewardSettings, key: str) -> "Component":
    """The callable behind one spec."""
    from rollouts.rewards.builtin import PER_SAMPLE_BUILTINS

    if spec.scorer is not None:
        return PerSample(spec.name, lambda output, sample: spec.scorer(_text_or_output(output), sample))
    if spec.entry == "http":
        from rollouts.rewards.http import HttpReward

        return Batched(spec.name, HttpReward(settings).score)
    if spec.entry in PER_SAMPLE_BUILTINS:
        return PerSample(spec.name, PER_SAMPLE_BUILTINS[spec.entry](settings))
    if spec.entry.startswith("verl:"):
        return PerSample(spec.name, VerlScore(resolve_function(spec.entry[len("verl:"):], key)))
    return Batched(spec.name, TrlFunction(resolve_function(spec.entry, key)))


def _text_or_output(output):
    return output.text if isinstance(output, RewardInput) else output


# -- calling them -----------------------------------------------------------------------------------
def value_of(value) -> RewardOutcome | None:
    """A reward function's return value as a component result: None stays None (does not apply)."""
    return None if value is None else outcome_of(value)


def failure_of(exc: BaseException) -> RewardOutcome:
    from rollouts.rewards.base import RewardTimeout

    if isinstance(exc, MemoryError):
        return RewardOutcome.failed("memory", "reward ran out of memory (task.reward_memory_mb)")
    return RewardOutcome.failed("timeout" if isinstance(exc, RewardTimeout) else "error",
                                f"{type(exc).__name__}: {exc}")


class PerSample:
    """A component scoring one completion per call."""

    batched = False

    def __init__(self, name: str, fn: Callable):
        self.name, self.fn = name, fn

    def score(self, output, sample: TaskSample) -> RewardOutcome | None:
        try:
            return value_of(self.fn(output, sample))
        except Exception as exc:  # a reward bug is the sample's failure, recorded, not raised
            return failure_of(exc)


class Batched:
    """A component scoring a group's completions in one call: ``fn(outputs, sample, state) -> list``."""

    batched = True

    def __init__(self, name: str, fn: Callable):
        self.name, self.fn = name, fn

    def score(self, outputs: list, sample: TaskSample, state: RewardState) -> tuple[list, dict]:
        """(one result per output, metrics the function logged)."""
        metrics: dict[str, list[float]] = {}
        try:
            values = self.fn(outputs, sample, state, metrics) if isinstance(self.fn, TrlFunction) else \
                self.fn(outputs, sample, state)
        except Exception as exc:
            if not isinstance(self.fn, TrlFunction) or len(outputs) == 1:
                return [failure_of(exc)] * len(outputs), metrics
            # the batch raised: score each completion alone, so the failure stays with the ones that cause it
            return [self.score([o], sample, state)[0][0] for o in outputs], metrics
        if not isinstance(values, (list, tuple)) or len(values) != len(outputs):
            found = f"{len(values)} values" if isinstance(values, (list, tuple)) else f"a {type(values).__name__}"
            return [RewardOutcome.failed("error", f"reward {self.name!r} returned {found} for {len(outputs)} "
                                                  "completions; return one per completion")] * len(outputs), metrics
        return [value_of(v) for v in values], metrics


class TrlFunction:
    """A TRL-style reward function called on a group, with TRL's keywords."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, outputs: list[RewardInput], sample: TaskSample, state: RewardState, metrics: dict) -> list:
        n = len(outputs)
        prompt = [dict(m) for m in sample.prompt] if sample.is_chat else sample.prompt
        completions = [[{"role": "assistant", "content": o.text}] for o in outputs] if sample.is_chat \
            else [o.text for o in outputs]
        columns = {k: [v] * n for k, v in sample.columns.items() if k not in TRL_RESERVED}
        # log_extra adds columns to TRL's completions table, which has no counterpart here: accepted, not kept
        kwargs = dict(columns, trainer_state=state, log_metric=lambda name, value: metrics.setdefault(
            name, []).append(float(value)), log_extra=lambda column, values: None)
        result = self.fn(prompts=[prompt] * n, completions=completions,
                         completion_ids=[list(o.token_ids) for o in outputs], **kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
        return result


async def _await(awaitable):
    return await awaitable


class VerlScore:
    """verl's ``compute_score`` per completion: the answer column is its ground_truth, ``data_source`` and
    ``extra_info`` come from the columns of those names when the row has them."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, output: RewardInput, sample: TaskSample):
        result = self.fn(data_source=sample.columns.get("data_source", ""), solution_str=output.text,
                         ground_truth=sample.reference, extra_info=sample.columns.get("extra_info"))
        if isinstance(result, dict):
            if "score" not in result:
                raise ValueError(f"verl reward returned a dict without 'score' (keys {sorted(result)})")
            return result["score"]
        return result


def combine(names: list[str], weights: list[float], values: list[RewardOutcome | None]) -> RewardOutcome:
    """One completion's reward from its components' results: the weighted sum (None counts 0), or the first
    failed component's failure; the outcome keeps every component's number (None: n/a, NaN: failed)."""
    components = tuple((name, None if v is None else (v.value if v.ok else math.nan)) for name, v in zip(names, values))
    for name, value in zip(names, values):
        if value is not None and not value.ok:
            detail = f"reward {name!r}: {value.detail}" if len(names) > 1 else value.detail
            return RewardOutcome(math.nan, value.status, detail, components)
    return RewardOutcome(weighted_sum([c for _, c in components], weights), components=components)


Component = PerSample | Batched  # what a RewardSpec resolves to in a reward process
