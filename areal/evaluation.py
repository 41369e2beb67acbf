"""Held-out evaluation: what each completion scored, the metrics over a set, and the generations file.

A held-out prompt gets one greedy completion and, with k > 0, k completions sampled at the training
temperature. A completion is *correct* when the first reward component (the verifier) scores at least a
threshold; accuracy is the greedy completions' share of correct ones, and from the k samples
pass@j (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1; ALGORITHMS.md
section 6) and mean@k. A completion whose reward failed is no score: it is left out of every mean and counted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


@dataclass(frozen=True)
class EvalSample:
    """One completion of a held-out prompt and its reward (``reward`` NaN and ``status`` not "ok" if it failed)."""

    output: Any  # the completion's text, or an image
    reward: float
    status: str = "ok"
    detail: str = ""
    components: tuple = ()  # (name, value) per reward function: a number, None (n/a) or NaN (failed)
    tokens: int = 0
    finish_reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def truncated(self) -> bool:
        """Ended by the token budget, not by EOS or a stop string."""
        return self.finish_reason == "length"

    def correct(self, threshold: float) -> bool:
        """The verifier (first component, or the reward itself) scores at least ``threshold``."""
        value = self.components[0][1] if self.components else self.reward
        return value is not None and not math.isnan(value) and value >= threshold


@dataclass(frozen=True)
class EvalRecord:
    """A held-out prompt: its greedy completion and its k sampled ones."""

    sample_id: str
    prompt: str
    reference: str
    greedy: EvalSample
    samples: tuple[EvalSample, ...] = field(default=())


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n - c, k) / C(n, k); 1 when n - c < k."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_ks(k: int) -> list[int]:
    """The j of the pass@j reported for k samples: powers of two below k, and k."""
    return sorted({2 ** i for i in range(k.bit_length()) if 2 ** i < k} | {k}) if k > 0 else []


def summarize(records: Sequence[EvalRecord], threshold: float | None, k: int = 0) -> dict[str, float]:
    """Metrics of one held-out set (keys without the eval/ prefix): reward, failures, completion length and
    truncation of the greedy completions; with a ``threshold`` (text rewards) accuracy, and with ``k`` pass@j
    and mean@k over the sampled completions. Means over nothing are NaN."""
    greedy = [r.greedy for r in records]
    scored = [g for g in greedy if g.ok]
    out = {"reward": _mean([g.reward for g in scored]), "failures": float(len(greedy) - len(scored))}
    if greedy and isinstance(greedy[0].output, str):
        out["length_mean"] = _mean([float(g.tokens) for g in greedy])
        out["truncated"] = _mean([float(g.truncated) for g in greedy])
    if threshold is None:
        return out
    out["accuracy"] = _mean([float(g.correct(threshold)) for g in scored])
    names = [name for name, _ in scored[0].components] if scored and len(scored[0].components) > 1 else []
    for i, name in enumerate(names):
        values = [g.components[i][1] for g in scored if g.components[i][1] is not None]
        out[f"reward/{name}"] = _mean(values)
    if k:
        counts = [(len(ok), sum(s.correct(threshold) for s in ok))
                  for ok in ([s for s in r.samples if s.ok] for r in records)]
        for j in pass_ks(k):
            out[f"pass@{j}"] = _mean([pass_at_k(n, c, j) for n, c in counts if n >= j])
        out[f"mean@{k}"] = _mean([c / n for n, c in counts if n])
    return out


def record_set(name: str, records: Sequence[EvalRecord], threshold: float | None, k: int, step: int,
               out_dir: Path) -> dict[str, float]:
    """One held-out set's evaluation at ``step``: its generations written to
    OUT/generations/<name>/step-N.jsonl, its metrics returned under eval/ (the default set, "eval") or
    eval/<name>/."""
    write_generations(Path(out_dir) / "generations" / name / f"step-{step:06d}.jsonl", step, name, records, threshold)
    prefix = "eval" if name == "eval" else f"eval/{name}"
    return {f"{prefix}/{key}": value for key, value in summarize(records, threshold, k).items()}


def describe_set(name: str, metrics: dict[str, float], k: int) -> str:
    """A set's result as the console shows it: "accuracy 0.620 (pass@4 0.810, 41 tokens, 5% truncated)"."""
    prefix = "eval" if name == "eval" else f"eval/{name}"
    main = "accuracy" if f"{prefix}/accuracy" in metrics else "reward"
    extra = [f"pass@{k} {metrics[f'{prefix}/pass@{k}']:.3f}"] if k and f"{prefix}/pass@{k}" in metrics else []
    if f"{prefix}/length_mean" in metrics:
        extra.append(f"{metrics[f'{prefix}/length_mean']:.0f} tokens, {metrics[f'{prefix}/truncated']:.0%} truncated")
    if metrics.get(f"{prefix}/failures"):
        extra.append(f"{int(metrics[f'{prefix}/failures'])} failed")
    text = f"{main} {metrics[f'{prefix}/{main}']:.3f}" + (f" ({', '.join(extra)})" if extra else "")
    return text if name == "eval" else f"{name}: {text}"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def write_generations(path: Path, step: int, name: str, records: Sequence[EvalRecord], threshold: float | None) -> None:
    """One JSON line per held-out prompt: prompt, reference, the greedy completion with its rewards and the
    sampled ones, so a person can read what the model wrote at this evaluation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            row = {"step": step, "set": name, "id": r.sample_id, "prompt": r.prompt, "reference": r.reference,
                   **_sample_json(r.greedy, threshold)}
            if r.samples:
                row["samples"] = [_sample_json(s, threshold) for s in r.samples]
            f.write(json.dumps(row, ensure_ascii=False, allow_nan=True) + "\n")


def _sample_json(s: EvalSample, threshold: float | None) -> dict:
    row = {"completion": s.output if isinstance(s.output, str) else None, "reward": s.reward,
           "rewards": {name: value for name, value in s.components}, "tokens": s.tokens,
           "finish_reason": s.finish_reason}
    if threshold is not None:
        row["correct"] = s.correct(threshold)
    if not s.ok:
        row["failure"] = f"{s.status}: {s.detail}"
    return row
