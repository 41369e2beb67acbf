"""One training run inside the benchmark's process, with its per-step metrics read back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# dashboards and the progress bar cost time and print; a benchmark reads metrics.jsonl instead
QUIET = ["logging.wandb_mode=disabled", "logging.tensorboard=false", "logging.progress=false"]


def train_and_read(overrides: list[str], out_dir: Path):
    """Train with ``overrides`` into a fresh ``out_dir``; returns (config, run summary, metrics.jsonl rows).

    The directory is cleared first: metrics and timeline files append, so a second run of the
    benchmark would otherwise read the rows of both.
    """
    from launch.config_loader import load_config
    from launch.train import train

    cfg, resolved = load_config([*overrides, f"out_dir={out_dir}", *QUIET])
    shutil.rmtree(out_dir, ignore_errors=True)
    summary = train(cfg, resolved)
    rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return cfg, summary, rows


def steady_steps(rows: list[dict], keys) -> tuple[list[dict], float, dict]:
    """(steady trained rows, wall seconds per steady step less evaluations, median of each of ``keys`` present):
    the first five steps are left out, they include the engine's warm-up."""
    import statistics

    trained = [r for r in rows if "learner/step_seconds" in r]
    steady = trained[5:] or trained
    per_step = (steady[-1]["time"] - steady[0]["time"] - sum(r.get("eval/seconds", 0.0) for r in steady[1:])) / \
        max(len(steady) - 1, 1)
    medians = {k: statistics.median(r[k] for r in steady if k in r) for k in keys if any(k in r for r in steady)}
    return steady, per_step, medians
