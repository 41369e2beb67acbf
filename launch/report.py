"""`areal report RUN_DIR`: PNG plots and one self-contained HTML page from a run directory.

Reads only what a run writes as it goes (metrics.jsonl, timeline.jsonl, config.yaml and, once
finished, summary.json), so it works on a finished, a running and a crashed run: a missing
file leaves its plots out, a half-written last line is skipped.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections import defaultdict
from pathlib import Path

PLOTS = ("reward", "held_out", "rewards", "lengths", "staleness", "throughput", "step_time", "timeline", "weight_sync",
         "loss")
GENERATIONS_SHOWN = 4  # held-out generations per set on the page (RUN_DIR/generations/ has them all)
# where one step's time goes (docs/performance.md): the learner's update and what separates two updates, and the
# rollout side's latency split into engine, reward and waiting
STEP_TIME = ("learner/step_seconds", "learner/forward_backward_seconds", "learner/proximal_seconds",
             "learner/optimizer_seconds", "learner/exchange_seconds", "learner/gap_seconds_mean",
             "weights/export_seconds_mean", "weights/sync_seconds", "driver/batch_seconds_mean",
             "rollout/latency_mean", "rollout/engine_seconds_mean", "rollout/reward_seconds_mean",
             "rollout/queue_seconds_mean", "eval/seconds")
# what the per-step plots are drawn against: the row key and the axis label
X_AXES = {"step": ("step", "step"), "time": ("elapsed_s", "seconds since the run started")}


def read_jsonl(path: Path) -> list[dict]:
    """The complete JSON lines of ``path`` ([] if absent); a torn last line (a live or killed run) is skipped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def series(rows: list[dict], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(x values, values) of the rows that have a finite ``key`` and an ``x`` value: ``x`` is ``step`` or
    ``time`` (the row's ``elapsed_s``)."""
    x_key = X_AXES[x][0]
    points = [(r[x_key], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
              and isinstance(r.get(x_key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def check_x_axis(rows: list[dict], x: str) -> None:
    """Refuse ``x`` (naming the choices) when it is unknown, or when no row has it: metrics.jsonl files written
    before rows carried ``elapsed_s`` can be drawn against steps only."""
    if x not in X_AXES:
        raise ValueError(f"areal report: --x {x!r}; expected one of {', '.join(X_AXES)}")
    x_key = X_AXES[x][0]
    if rows and not any(x_key in r for r in rows):
        raise ValueError(f"areal report: no row of metrics.jsonl has {x_key!r} (written by an older areal); "
                         "use --x step")


def staleness_counts(rows: list[dict]) -> dict[int, float]:
    """Trained samples per staleness (versions behind the learner), summed over the run."""
    counts: dict[int, float] = defaultdict(float)
    for r in rows:
        for key, value in r.items():
            if key.startswith("staleness/hist_") and value:
                counts[int(key.rsplit("_", 1)[1])] += value
    return dict(sorted(counts.items()))


def step_time_breakdown(rows: list[dict]) -> dict[str, float]:
    """Median of each step-time series over the train steps that have it (``STEP_TIME``), plus the median
    seconds between consecutive train steps."""
    import statistics

    out = {}
    trained = [r for r in rows if isinstance(r.get("learner/step_seconds"), (int, float))]
    stamps = [r["elapsed_s"] for r in trained if isinstance(r.get("elapsed_s"), (int, float))]
    if len(stamps) > 1:
        out["seconds between steps"] = statistics.median(b - a for a, b in zip(stamps, stamps[1:]))
    for key in STEP_TIME:
        values = [r[key] for r in trained if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if values:
            out[key] = statistics.median(values)
    return out


def _figure(plt, title: str, ylabel: str, xlabel: str = "step"):
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _lines(ax, rows: list[dict], keys: list[str], x: str) -> list[str]:
    drawn = []
    for key in keys:
        xs, ys = series(rows, key, x)
        if xs:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=key)
            drawn.append(key)
    if drawn:
        ax.legend(fontsize=7)
    return drawn


def plot_all(rows: list[dict], timeline: list[dict], out: Path, x: str = "step") -> dict[str, list[str]]:
    """Write every plot the data supports to ``out``/<name>.png, the per-step ones against ``x`` (``step`` or
    ``time``); returns {name: series drawn}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn: dict[str, list[str]] = {}
    unit = "denoising_steps" if any("rollout/denoising_steps_per_s" in r for r in rows) else "tokens"
    specs = {
        "reward": ("Reward and held-out score", "value", ["rollout/reward_mean", "eval/accuracy", "eval/reward"]),
        "throughput": (f"Generated vs consumed {unit} per second", f"{unit}/s",
                       [f"rollout/{unit}_per_s", f"learner/{unit}_per_s"]),
        "step_time": ("Where a step's time goes", "seconds", list(STEP_TIME)),
        "weight_sync": ("Weight sync", "seconds", ["weights/sync_seconds", "weights/load_seconds_max"]),
        "loss": ("Loss statistics", "value", ["learner/loss", "learner/clip_fraction", "learner/approx_kl",
                                                "learner/grad_norm", "learner/behavior_weight_mean"]),
    }
    keys_seen = sorted({k for r in rows for k in r})
    specs["held_out"] = ("Held-out sets: accuracy, pass@k, mean@k", "fraction",
                         [k for k in keys_seen if k.startswith("eval/") and k.rsplit("/", 1)[-1].startswith(
                             ("accuracy", "pass@", "mean@"))])
    specs["rewards"] = ("Reward functions (training samples)", "mean value",
                        [k for k in keys_seen if k.startswith("reward/") and not k.endswith("_failures")])
    specs["lengths"] = ("Completion length (tokens) and truncation", "tokens",
                        ["rollout/completion_tokens_mean", "rollout/completion_tokens_p95",
                         "rollout/completion_tokens_max", "rollout/prompt_tokens_mean"])
    for name, (title, ylabel, keys) in specs.items():
        fig, ax = _figure(plt, title, ylabel, X_AXES[x][1])
        if name == "loss":
            ax.set_yscale("symlog", linthresh=1e-3)
        drawn[name] = _lines(ax, rows, keys, x)
        _save(plt, fig, out / f"{name}.png", drawn[name])

    counts = staleness_counts(rows)
    fig, ax = _figure(plt, "Staleness of trained samples", "samples", "versions behind the learner")
    if counts:
        ax.bar(list(counts), list(counts.values()))
        ax.set_xticks(list(counts))
    drawn["staleness"] = [f"staleness {k}: {int(v)}" for k, v in counts.items()]
    _save(plt, fig, out / "staleness.png", drawn["staleness"])

    drawn["timeline"] = plot_timeline(plt, timeline, out / "timeline.png")
    return drawn


def plot_timeline(plt, timeline: list[dict], path: Path) -> list[str]:
    """One row per actor: busy spans (learner, rollout workers) and weight syncs, seconds from the start."""
    spans = [e for e in timeline if e.get("kind") in ("busy", "sync")]
    actors = sorted({e["actor"] for e in spans}, key=lambda a: (a != "learner", a != "weights", a))
    fig, ax = _figure(plt, "Busy (coloured) and idle (blank) time per actor", "", "seconds since the first step")
    if spans:
        t0 = min(e["start"] for e in spans)
        for row, actor in enumerate(actors):
            bars = [(e["start"] - t0, e["end"] - e["start"]) for e in spans if e["actor"] == actor]
            ax.broken_barh(bars, (row - 0.4, 0.8), color="tab:orange" if actor == "weights" else "tab:blue")
        ax.set_yticks(range(len(actors)))
        ax.set_yticklabels(actors)
    _save(plt, fig, path, actors)
    return actors


def _save(plt, fig, path: Path, drawn: list[str]) -> None:
    if not drawn:
        fig.gca().text(0.5, 0.5, "no data yet", ha="center", va="center", transform=fig.gca().transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_state(run_dir: Path, rows: list[dict]) -> str:
    if (run_dir / "summary.json").exists():
        return "finished"
    return "running or stopped early (no summary.json)" if rows else "no metrics yet"


def write_html(run_dir: Path, out: Path, rows: list[dict], drawn: dict[str, list[str]], x: str = "step") -> Path:
    """One page: the state, the last metrics, every plot inline (base64), the resolved config."""
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    last = next((r for r in reversed(rows) if "learner/loss" in r), {})
    headline = {k: v for k, v in last.items() if k.split("/")[0] in ("rollout", "eval", "staleness", "learner")
                and not k.startswith("staleness/hist_")}
    parts = [f"<h1>areal run report: {html.escape(run_dir.name)}</h1>",
             f"<p>state: <b>{html.escape(run_state(run_dir, rows))}</b>; steps logged: "
             f"{max((r.get('step', 0) for r in rows), default=0)}; per-step plots against: {X_AXES[x][1]}</p>"]
    if summary:
        keys = ("eval_metric", "initial_eval", "final_eval", "steps", "seconds", "max_trained_staleness",
                "learner_restarts")
        parts.append(_table({k: summary[k] for k in keys if k in summary}, "summary"))
    breakdown = step_time_breakdown(rows)
    if breakdown:
        parts.append(_table(breakdown, "step time: median seconds over train steps (docs/performance.md)"))
    if headline:
        parts.append(_table(headline, f"last train step ({last.get('step')})"))
    for name in PLOTS:
        data = base64.b64encode((out / f"{name}.png").read_bytes()).decode()
        parts.append(f'<h2>{name.replace("_", " ")}</h2><img alt="{name}" src="data:image/png;base64,{data}">'
                     f"<p class=series>{html.escape(', '.join(drawn.get(name, [])) or 'no data yet')}</p>")
    parts += generations_html(run_dir)
    if (run_dir / "config.yaml").exists():
        parts.append(f"<h2>config</h2><pre>{html.escape((run_dir / 'config.yaml').read_text())}</pre>")
    page = ("<!doctype html><meta charset=utf-8><title>areal report</title><style>body{font-family:sans-serif;"
            "max-width:900px;margin:auto} td{padding:2px 8px} .series{color:#555;font-size:small} "
            "pre{white-space:pre-wrap;background:#f6f6f6;padding:4px} .gen{border-top:1px solid #ddd}</style>"
            + "\n".join(parts))
    path = out / "report.html"
    path.write_text(page)
    return path


def latest_generations(run_dir: Path) -> dict[str, tuple[str, list[dict]]]:
    """Per held-out set, (its newest generations file's name, its first rows)."""
    found = {}
    for folder in sorted(p for p in (run_dir / "generations").glob("*") if p.is_dir()):
        files = sorted(folder.glob("step-*.jsonl"))
        if files:
            found[folder.name] = (files[-1].name, read_jsonl(files[-1])[:GENERATIONS_SHOWN])
    return found


def generations_html(run_dir: Path) -> list[str]:
    """What the model wrote at the newest evaluation: a few held-out prompts per set, with each reward."""
    parts = []
    for name, (file, rows) in latest_generations(run_dir).items():
        parts.append(f"<h2>what the model wrote: {html.escape(name)} ({html.escape(file)})</h2>")
        for r in rows:
            rewards = ", ".join(f"{k} {_fmt(v)}" for k, v in (r.get("rewards") or {}).items())
            verdict = "" if "correct" not in r else (" correct" if r["correct"] else " wrong")
            parts.append(f"<div class=gen><b>prompt</b><pre>{html.escape(str(r.get('prompt', '')))}</pre>"
                         f"<b>completion</b>{html.escape(verdict)} (reward {_fmt(r.get('reward'))}"
                         f"{'; ' + html.escape(rewards) if rewards else ''}; reference "
                         f"{html.escape(str(r.get('reference', '')))})<pre>"
                         f"{html.escape(str(r.get('completion') or r.get('failure') or ''))}</pre></div>")
    return parts


def _table(values: dict, caption: str) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{_fmt(v)}</td></tr>" for k, v in values.items())
    return f"<h2>{html.escape(caption)}</h2><table>{rows}</table>"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def run_dir_problem(run_dir: str | Path) -> str:
    """Why ``run_dir`` is not a run's directory; "" when it is. A run's holds the marker areal writes when the run
    starts, or (a run from before the marker) its metrics.jsonl: anything else would get a page of empty plots."""
    from launch.run_dir import RUN_MARKER

    run_dir = Path(run_dir)
    if not run_dir.exists():
        return f"{run_dir} is not a run directory (it does not exist): give the out_dir of a run"
    if not run_dir.is_dir():
        return f"{run_dir} is not a run directory (it is a file): give the out_dir of a run"
    if not ((run_dir / RUN_MARKER).exists() or (run_dir / "metrics.jsonl").is_file()):
        return (f"{run_dir} is not a run directory (it holds neither {RUN_MARKER} nor metrics.jsonl): give the "
                "out_dir of a run")
    return ""


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, x: str = "step") -> Path:
    """Plots and report.html for ``run_dir`` (into ``out_dir``, default RUN_DIR/report), the per-step plots
    against ``x``: ``step`` or ``time`` (seconds since the run started); returns the page."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"areal report: {run_dir} is not a run directory (the out_dir of a run)")
    rows = read_jsonl(run_dir / "metrics.jsonl")
    check_x_axis(rows, x)
    out = Path(out_dir) if out_dir else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    drawn = plot_all(rows, read_jsonl(run_dir / "timeline.jsonl"), out, x)
    return write_html(run_dir, out, rows, drawn, x)
