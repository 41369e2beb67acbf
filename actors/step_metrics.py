"""Per-step metrics and the busy/idle timeline of every actor (RUN_DIR/timeline.jsonl).

The driver records events as they happen; once per train step this turns the
window into namespaced scalars (throughputs, staleness histogram, idle
fractions of both sides) and appends the window's busy intervals to the
timeline file, which run reports and ``bench/balance.py`` draw from.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from areal.timeline import BusyTracker


def shape_metrics(w: dict[str, list[float]]) -> dict[str, float]:
    """Completion lengths (mean, p95, max), the fraction cut by the token budget, prompt length, and each
    reward function's mean (reward/<name>) and failures (reward/<name>_failures) over the window."""
    out = {}
    lengths = sorted(w.get("rollout/completion_tokens", []))
    if lengths:
        out["rollout/completion_tokens_mean"] = sum(lengths) / len(lengths)
        out["rollout/completion_tokens_p95"] = float(lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))])
        out["rollout/completion_tokens_max"] = float(lengths[-1])
    for key, name in (("rollout/truncated", "rollout/truncated_fraction"),
                      ("rollout/prompt_tokens", "rollout/prompt_tokens_mean")):
        if w.get(key):
            out[name] = sum(w[key]) / len(w[key])
    for key in [k for k in w if k.startswith("reward/")]:
        values = w[key]
        if key.endswith("_failures"):
            out[key] = float(sum(values))
        elif values:
            out[key] = sum(values) / len(values)
    return out


class StepMetrics:
    """The current step's observations, and the timeline file."""

    def __init__(self, timeline_path: Path, action_unit: str = "tokens"):
        self.unit = action_unit  # what rollouts generate and learners consume: tokens or denoising steps
        self.learner = BusyTracker()  # busy while a train step runs
        self.window: dict[str, list[float]] = {}
        self.window_start = time.time()
        self._syncs: list[tuple[float, float]] = []
        timeline_path.parent.mkdir(parents=True, exist_ok=True)
        self._timeline = open(timeline_path, "a", buffering=1)

    def new_window(self, start: float | None = None) -> None:
        self.window, self.window_start = {}, time.time() if start is None else start

    def record(self, key: str, *values: float) -> None:
        self.window.setdefault(key, []).extend(values)

    def sync(self, start: float, end: float) -> None:
        self._syncs.append((start, end))

    def step(self, learner_stats: dict[str, float], rollout_busy: dict[str, list[tuple[float, float]]]) -> dict:
        """Everything observed since the previous step, as scalars; ``rollout_busy`` maps each live
        rollout worker to its busy intervals in the window."""
        since, now = self.window_start, time.time()
        elapsed = max(now - since, 1e-9)
        w = self.window
        metrics = dict(learner_stats)
        rewards = w.get("rollout/reward", [])
        metrics["rollout/reward_mean"] = sum(rewards) / max(len(rewards), 1)
        for key in ("accepted", "stale", "filtered", "reward_failures", "prompt_too_long"):
            metrics[f"rollout/{key}"] = float(sum(w.get(f"rollout/{key}", [])))
        metrics[f"rollout/{self.unit}_per_s"] = sum(w.get("rollout/generated", [])) / elapsed
        metrics[f"learner/{self.unit}_per_s"] = sum(w.get("learner/consumed", [])) / elapsed
        metrics["rollout/samples_per_s"] = sum(w.get("rollout/samples", [])) / elapsed
        # the step's time breakdown: means of what was timed in the window (the critical path: docs/performance.md)
        for key in ("rollout/latency", "rollout/engine_seconds", "rollout/reward_seconds", "rollout/queue_seconds",
                    "learner/gap_seconds", "weights/export_seconds", "driver/batch_seconds"):
            if w.get(key):
                metrics[f"{key}_mean"] = sum(w[key]) / len(w[key])
        for key in [k for k in w if k.startswith("agent/")]:  # means over the window's groups
            metrics[f"{key}_mean"] = sum(w[key]) / len(w[key])
        metrics.update(shape_metrics(w))
        stale = w.get("staleness/trained", [])
        if stale:
            metrics["staleness/mean"] = sum(stale) / len(stale)
            metrics["staleness/max"] = float(max(stale))
            for value, count in Counter(stale).items():
                metrics[f"staleness/hist_{int(value)}"] = float(count)
        busy = [sum(max(0.0, min(b, now) - max(a, since)) for a, b in spans) for spans in rollout_busy.values()]
        metrics["rollout/idle_fraction"] = 1.0 - sum(busy) / (elapsed * max(len(busy), 1))
        metrics["learner/idle_fraction"] = self.learner.idle_fraction(since, now)
        self._write_timeline(rollout_busy, since, now)
        self.new_window(now)
        return metrics

    def _write_timeline(self, rollout_busy: dict, since: float, now: float) -> None:
        rows = [("learner", "busy", span) for span in self.learner.spans(since, now)]
        rows += [(actor, "busy", span) for actor, spans in rollout_busy.items() for span in spans]
        rows += [("weights", "sync", span) for span in self._syncs]
        self._syncs = []
        for actor, kind, (a, b) in rows:
            if b > a:
                self._timeline.write(json.dumps({"actor": actor, "kind": kind, "start": a, "end": b}) + "\n")
        self._timeline.write(json.dumps({"actor": "window", "kind": "step", "start": since, "end": now}) + "\n")

    def close(self) -> None:
        self._timeline.close()
