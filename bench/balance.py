"""Throughput balancing off vs on, on the demo run, in one invocation.

    python bench/balance.py [--steps 40] [--warmup 10]

Runs arith_tiny (1 vLLM rollout worker, 1 DeepSpeed learner, max_staleness 4) twice from the
same warm start and seed: ``controller.balance=false`` (the in-flight limit stays at
rollout.max_concurrent) and ``controller.balance=true``. For the steps after ``--warmup`` it
prints the idle fractions of the rollout and learner sides (from each actor's busy intervals,
RUN_DIR/timeline.jsonl), effective throughput (learner-consumed tokens and trained samples per
second of the training loop) and its ratio on/off, mean staleness of trained samples, and the
in-flight limit the balancer settled on. Writes bench/results/balance.{json,md,png}; the PNG is
the busy/idle timeline of every actor in both runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.provenance import RESULTS, provenance, write_results  # noqa: E402
from bench.training_run import train_and_read  # noqa: E402


def run_one(model_path: str, balance: bool, steps: int, out_dir: Path) -> dict:
    _, summary, rows = train_and_read([
        "experiment=arith_tiny", f"model_path={model_path}", f"total_steps={steps}",
        f"controller.balance={str(balance).lower()}", "eval_every=0",
    ], out_dir)
    return {"summary": summary, "steps": [r for r in rows if "learner/loss" in r]}


def steady_state(run: dict, warmup: int) -> dict:
    """Means over the steps after warm-up (the first steps include engine warm-up and the buffer filling)."""
    steps = run["steps"][warmup:]

    def mean(key):
        values = [s[key] for s in steps if s.get(key) is not None]
        return sum(values) / len(values) if values else float("nan")

    return {
        "rollout_idle": mean("rollout/idle_fraction"), "learner_idle": mean("learner/idle_fraction"),
        "learner_tokens_per_s": mean("learner/tokens_per_s"), "staleness_mean": mean("staleness/mean"),
        "in_flight_limit": steps[-1].get("controller/in_flight_limit") if steps else None,
        "weight_sync_s": mean("weights/sync_seconds"),
    }


def load_timeline(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "timeline.jsonl").read_text().splitlines()]


def plot(timelines: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(timelines), 1, figsize=(11, 1.6 + 1.1 * len(timelines)), squeeze=False)
    colors = {"busy": "tab:green", "sync": "tab:orange"}
    for ax, (title, rows) in zip(axes[:, 0], timelines.items()):
        t0 = min(r["start"] for r in rows)
        actors = sorted({r["actor"] for r in rows if r["actor"] != "window"}, key=lambda a: (a != "learner", a))
        for y, actor in enumerate(actors):
            for kind in ("busy", "sync"):
                spans = [(r["start"] - t0, r["end"] - r["start"]) for r in rows if r["actor"] == actor
                         and r["kind"] == kind]
                if spans:
                    ax.broken_barh(spans, (y - 0.35, 0.7), color=colors[kind], label=f"{kind}" if y == 0 else None)
        ax.set_yticks(range(len(actors)), actors)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("seconds since the first step")
        ax.set_facecolor("#f2f2f2")  # idle shows as grey
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    fig.legend(handles, ["busy", "weight sync"], loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the steady-state means")
    args = parser.parse_args()
    from launch.train import demo_model

    model_path = str(demo_model(0))
    out_root = ROOT / "runs" / "bench_balance"
    runs, timelines = {}, {}
    for balance in (False, True):
        name = "balance_on" if balance else "balance_off"
        runs[name] = run_one(model_path, balance, args.steps, out_root / name)
        timelines[f"controller.balance={str(balance).lower()}"] = load_timeline(out_root / name)
    rows = {name: steady_state(run, args.warmup) for name, run in runs.items()}
    for name, run in runs.items():
        trained = run["summary"]["ledger"]["trained"]
        rows[name]["trained_groups_per_s"] = trained / run["summary"]["train_loop_seconds"]
        rows[name]["accuracy"] = (run["summary"]["initial_eval"], run["summary"]["final_eval"])
    off, on = rows["balance_off"], rows["balance_on"]
    ratio = on["learner_tokens_per_s"] / off["learner_tokens_per_s"]
    plot(timelines, RESULTS / "balance.png")
    lines = [
        "# Throughput balancing off vs on (demo run)", "",
        f"`{provenance('')['command']}`; arith_tiny, {args.steps} steps, means over steps {args.warmup + 1}-"
        f"{args.steps}. Timeline: bench/results/balance.png (green busy, orange weight sync, grey idle).", "",
        "| controller.balance | rollout idle | learner idle | learner tokens/s | trained groups/s | "
        "mean staleness | in-flight limit | weight sync s | accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        limit = "max_concurrent" if r["in_flight_limit"] is None else f"{r['in_flight_limit']:.0f}"
        lines.append(f"| {name == 'balance_on'} | {r['rollout_idle']:.3f} | {r['learner_idle']:.3f} | "
                     f"{r['learner_tokens_per_s']:.0f} | {r['trained_groups_per_s']:.1f} | {r['staleness_mean']:.2f} "
                     f"| {limit} | {r['weight_sync_s']:.3f} | {r['accuracy'][0]:.3f} -> {r['accuracy'][1]:.3f} |")
    lines += ["", f"Effective throughput ratio on/off (learner tokens/s): **{ratio:.2f}x**", ""]
    result = {"setup": provenance("arith_tiny, 1 rollout worker + 1 learner, max_staleness 4, balance off vs on"),
              "steps": args.steps, "warmup": args.warmup, "rows": rows, "throughput_ratio_on_off": ratio}
    write_results("balance", result, "\n".join(lines))


if __name__ == "__main__":
    main()
