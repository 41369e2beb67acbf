"""Your rows as a task (``task.type=dataset``; ``gsm8k`` is one with GSM8K's columns and template).

Rows are read with Hugging Face ``datasets`` (``rollouts.data.sources``), checked once (``rollouts.data.columns``),
and those whose prompt would not fit the engine are left out and counted (``rollouts.data.prompt_budget``). The
held-out set is ``task.eval_path`` (or ``task.eval_split``), else ``task.eval_size`` rows drawn out of the training
rows with ``task.seed``; ``task.eval_sets`` adds named ones. Scoring is the rewards' (``task.rewards``), run in the
rollout workers' reward processes: this object only serves rows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from areal.config import TrainConfig
from rollouts.data.columns import CHAT, DatasetRowError, RowSpec, check_segment
from rollouts.data.prompt_budget import prompts_within
from rollouts.data.rows import RowSamples, row_prompt
from rollouts.data.sources import Segment, load_segments, source_digest, source_list
from rollouts.prompt_format import PromptFormat
from rollouts.tasks.base import Task, TaskSample

READS_ANSWER = ("math_verify",)  # built-ins that score against the answer column


@dataclass(frozen=True)
class LoadedRows:
    """The rows of some sources that can be used, and what was left out."""

    segments: list[Segment]
    kinds: list[str]
    kept: np.ndarray  # row numbers over the segments end to end
    too_long: int
    tokenized: int

    @property
    def total(self) -> int:
        return sum(len(s) for s in self.segments)


class DatasetTask(Task):
    """Training rows and named held-out sets of a dataset (see the module doc)."""

    def __init__(self, train: RowSamples, eval_sets: dict[str, RowSamples], digest: str, report: list[str]):
        super().__init__(train=train, eval=eval_sets["eval"])
        self._sets, self._digest = eval_sets, digest
        self.report = report  # one console line per source: rows read, left out, held out

    @property
    def eval_sets(self) -> dict[str, Sequence[TaskSample]]:
        return dict(self._sets)

    def digest(self) -> str:
        return self._digest


def row_spec(cfg: TrainConfig, prompt_key: str = "", answer_key: str = "", template: str = "",
             rewards: list[str] | None = None, where: str = "task") -> RowSpec:
    """Which columns the task's rows must have, given its keys and the rewards that read them."""
    t = cfg.task
    names = t.reward_names if rewards is None or not rewards else rewards
    prefix = "task" if where == "task" else where
    return RowSpec(
        prompt_key=prompt_key or t.prompt_key, template=template or t.template,
        answer_key=answer_key or t.answer_key,
        answer_required=any(r in READS_ANSWER or r.startswith("verl:") for r in names),
        required_text=(((t.tests_key, "task.tests_key"),) if "code_tests" in names else ()),
        prompt_key_name=f"{prefix}.prompt_key", answer_key_name=f"{prefix}.answer_key")


def load_rows(path, split: str, key: str, spec: RowSpec, fmt: PromptFormat, tokenizer, budget: int) -> LoadedRows:
    """Read, check and length-filter the rows of ``path`` (``key`` names it in errors)."""
    segments = load_segments(path, split, key)
    kinds, kept, too_long, tokenized, start = [], [], 0, 0, 0
    for segment in segments:
        kind = check_segment(segment, spec)
        if kind == CHAT and not fmt.uses_chat(tokenizer):
            raise DatasetRowError(f"{segment.name}, column {spec.prompt_key!r}: the prompts are chat conversations, "
                                  "but the model's tokenizer has no chat template or task.chat_template=none: use a "
                                  "chat model with task.chat_template=auto, or string prompts")
        result = prompts_within(
            segment, kind, spec.prompt_key, spec.template,
            prompt_of=lambda i, s=segment, k=kind: row_prompt(s.rows[i], k, spec),
            encode_len=lambda p: len(fmt.encode(tokenizer, p)), render=lambda p: fmt.render(tokenizer, p),
            budget=budget)
        kinds.append(kind)
        kept.append(np.flatnonzero(result.fits) + start)
        too_long += int(len(segment) - result.fits.sum())
        tokenized += result.tokenized
        start += len(segment)
    return LoadedRows(segments, kinds, np.concatenate(kept), too_long, tokenized)


def load_dataset_task(cfg: TrainConfig, tokenizer) -> DatasetTask:
    """The task's training rows and held-out sets, checked and length-filtered against the engine's budget."""
    t = cfg.task
    # the room a prompt leaves must hold the completion (a multi-turn episode's turns and observations)
    budget = cfg.engine.max_model_len - (cfg.env.max_episode_tokens if cfg.env.multi_turn else cfg.rollout.max_new_tokens)
    fmt = PromptFormat(t.chat_template, t.system_prompt)
    spec = row_spec(cfg)
    train = load_rows(t.path, t.split, "task.path", spec, fmt, tokenizer, budget)
    report = [_describe("training rows", source_list(t.path), train, budget)]
    if not len(train.kept):
        raise DatasetRowError(f"task.path = {t.path!r}: no row's prompt fits in {budget} tokens "
                              "(engine.max_model_len - rollout.max_new_tokens): raise engine.max_model_len")
    if t.eval_path or t.eval_split:
        held = load_rows(t.eval_path or t.path, t.eval_split or t.split, "task.eval_path", spec, fmt, tokenizer,
                         budget)
        eval_rows = RowSamples(held.segments, held.kinds, spec, held.kept[:t.eval_size])
        report.append(_describe("held-out rows", source_list(t.eval_path or t.path), held, budget,
                                f"the first {len(eval_rows)} evaluated (task.eval_size)"))
        train_index = train.kept
    else:
        if len(train.kept) <= t.eval_size:
            raise DatasetRowError(f"task.path = {t.path!r} has {len(train.kept)} usable rows; holding out "
                                  f"task.eval_size={t.eval_size} of them leaves none to train on: lower task.eval_size "
                                  "or give task.eval_path")
        drawn = np.random.default_rng(t.seed).permutation(len(train.kept))
        held_out = np.sort(train.kept[drawn[:t.eval_size]])
        train_index = np.sort(train.kept[drawn[t.eval_size:]])
        eval_rows = RowSamples(train.segments, train.kinds, spec, held_out)
        report.append(f"held out {t.eval_size} of them for evaluation (task.eval_size, drawn with task.seed)")
    train_rows = RowSamples(train.segments, train.kinds, spec, train_index)
    sets = {"eval": eval_rows}
    for extra in t.eval_sets:
        key = f"task.eval_sets[{extra.name}]"
        extra_spec = row_spec(cfg, extra.prompt_key, extra.answer_key, extra.prompt_template, extra.rewards, key)
        rows = load_rows(extra.path, extra.split, f"{key}.path", extra_spec, fmt, tokenizer, budget)
        sets[extra.name] = RowSamples(rows.segments, rows.kinds, extra_spec,
                                      rows.kept[:extra.size] if extra.size else rows.kept)
        report.append(_describe(f"held-out set {extra.name!r}", source_list(extra.path), rows, budget,
                                f"{len(sets[extra.name])} evaluated"))
    digest = hashlib.sha256(json.dumps([source_digest(train.segments), *train_rows.digest_parts()]).encode())
    return DatasetTask(train_rows, sets, digest.hexdigest()[:16], report)


def _describe(what: str, sources: list[str], rows: LoadedRows, budget: int, used: str = "") -> str:
    named = sources[0] if len(sources) == 1 else f"{len(sources)} sources"
    line = f"{what}: {rows.total:,} from {named}" + (f", {used}" if used else "")
    if rows.too_long:
        line += (f"; {rows.too_long:,} left out, their prompts longer than {budget} tokens "
                 "(engine.max_model_len - rollout.max_new_tokens)")
    return line


def check_dataset_rows(cfg: TrainConfig) -> None:
    """Every source of a dataset task loads and its rows hold the columns the task and its rewards read, and the
    training rows outnumber those held out: the checks that need no tokenizer, run before anything starts
    (``DatasetSourceError``/``DatasetRowError`` naming the file, row and column). Prompt lengths are measured
    when the task is built, with the model's tokenizer."""
    t = cfg.task
    holds_out = not (t.eval_path or t.eval_split)
    sources = [(t.path, t.split, "task.path", row_spec(cfg))]
    if not holds_out:
        sources.append((t.eval_path or t.path, t.eval_split or t.split, "task.eval_path", row_spec(cfg)))
    for extra in t.eval_sets:
        key = f"task.eval_sets[{extra.name}]"
        sources.append((extra.path, extra.split, f"{key}.path",
                        row_spec(cfg, extra.prompt_key, extra.answer_key, extra.prompt_template, extra.rewards, key)))
    for path, split, key, spec in sources:
        check_source(path, split, key, spec, t.eval_size if holds_out and key == "task.path" else 0)


def check_source(path, split: str, key: str, spec: RowSpec, held_out: int) -> None:
    """One source loads, its rows hold the columns ``spec`` reads, and there are more than ``held_out``."""
    segments = load_segments(path, split, key)
    for segment in segments:
        check_segment(segment, spec)
    rows = sum(len(s) for s in segments)
    if not rows:
        raise DatasetRowError(f"{key} = {path!r} holds no rows")
    if held_out and rows <= held_out:
        raise DatasetRowError(f"task.path = {path!r} has {rows} rows; holding out task.eval_size={held_out} of them "
                              "leaves none to train on: lower task.eval_size or give task.eval_path")
