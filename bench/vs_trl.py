"""areal against TRL's synchronous GRPOTrainer on the same model and task, in one invocation.

    python bench/vs_trl.py [--steps 150] [--eval-every 10] [--threads 2]

Both start from the bootstrapped demo model (``tiny-arith-seed0-newline``) and train on
``experiment=arith_tiny``'s task, held-out set (200 problems, greedy, exact answer), batch
shape (16 prompts x 8 samples), learning rate and completion budget: TRL as its users run it
on a CPU (``bench/trl_baseline.py``), then ``areal train experiment=arith_tiny`` with its
defaults. TRL needs the ``bench`` extra (``pip install -e .[bench]``).

The clock is training wall-clock: evaluation time is taken out of both (TRL's clock stops while
it evaluates; areal's rows carry ``eval/seconds``, subtracted; areal's learner may finish the
step already running during an evaluation, which the ``wall`` columns, evaluation included,
do not hide). Start-up (model load, Ray, engine) is outside both clocks and reported apart.

Prints and writes bench/results/vs_trl.{json,md}: held-out accuracy against the clock for
each, the first time each reaches the target accuracy and +20 / +40 points over its start,
seconds per step, and areal's step-time breakdown.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.provenance import provenance, write_results  # noqa: E402
from bench.training_run import train_and_read  # noqa: E402

TARGET = 0.77  # the level TRL reached in ~110 s when this comparison was first made (issue 16)
BREAKDOWN = ("learner/step_seconds", "learner/proximal_seconds", "learner/forward_backward_seconds",
             "learner/optimizer_seconds", "learner/exchange_seconds", "learner/gap_seconds_mean",
             "weights/export_seconds_mean", "driver/batch_seconds_mean", "weights/sync_seconds",
             "rollout/latency_mean", "rollout/engine_seconds_mean", "rollout/reward_seconds_mean",
             "rollout/queue_seconds_mean")


def first_reaching(evals: list[tuple[int, float, float]], level: float) -> tuple[int, float] | None:
    """(step, clock seconds) of the first evaluation at or above ``level``."""
    return next(((step, clock) for step, clock, acc in evals if acc >= level - 1e-9), None)


def summarize(name: str, evals: list, step_seconds: float | None, extra: dict) -> dict:
    start = evals[0][2]
    return {"system": name, "evals": [list(e) for e in evals], "start_accuracy": start,
            "final_accuracy": evals[-1][2], "seconds_per_step": step_seconds,
            "reach_target": first_reaching(evals, TARGET), "reach_plus_20": first_reaching(evals, start + 0.20),
            "reach_plus_40": first_reaching(evals, start + 0.40), **extra}


def run_trl(model: str, cfg, task, args) -> dict:
    from bench.trl_baseline import run_trl as train_trl

    begun = time.perf_counter()
    out = train_trl(model, task, args.steps, args.eval_every, cfg.batch_size, cfg.rollout.samples_per_prompt,
                    cfg.learner.lr, cfg.rollout.max_new_tokens, args.threads, cfg.seed, str(ROOT / "runs" / "bench_trl"))
    wall = time.perf_counter() - begun
    return summarize("TRL GRPOTrainer", out["evals"], out["step_seconds_median"],
                     {"wall_seconds_total": wall, "train_seconds": out["train_seconds"]})


def areal_clock(rows: list[dict], eval_key: str) -> list[tuple[int, float, float]]:
    """(step, training seconds, accuracy) at each evaluation: seconds since the first evaluation ended, less
    the evaluations since."""
    evals, t0, spent = [], None, 0.0
    for row in rows:
        if eval_key not in row:
            continue
        if t0 is None:
            t0 = row["time"]
        else:
            spent += row.get("eval/seconds", 0.0)
        evals.append((int(row["step"]), row["time"] - t0 - spent, row[eval_key]))
    return evals


def run_areal(model: str, args) -> dict:
    begun = time.perf_counter()
    cfg, summary, rows = train_and_read(["experiment=arith_tiny", f"model_path={model}", f"total_steps={args.steps}",
                                         f"eval_every={args.eval_every}", *args.areal], ROOT / "runs" / "bench_vs_trl")
    wall = time.perf_counter() - begun
    evals = areal_clock(rows, "eval/accuracy")
    trained = [r for r in rows if "learner/step_seconds" in r]
    steady = trained[5:] or trained  # the first steps include engine warm-up
    per_step = (steady[-1]["time"] - steady[0]["time"] - sum(r.get("eval/seconds", 0.0) for r in steady[1:])) / \
        max(len(steady) - 1, 1)
    breakdown = {key: statistics.median(r[key] for r in steady if key in r)
                 for key in BREAKDOWN if any(key in r for r in steady)}
    return summarize("areal", evals, per_step, {
        "wall_seconds_total": wall, "startup_seconds": wall - summary["seconds"],  # Ray, engine, learner up
        "step_breakdown_median": breakdown,
        "staleness_mean": statistics.mean(r.get("staleness/mean", 0.0) for r in steady),
        "overrides": args.areal})


def fmt_reach(reach) -> str:
    return "not reached" if reach is None else f"{reach[1]:.0f} s (step {reach[0]})"


def accuracy_at(evals: list, seconds: float) -> str:
    seen = [(step, acc) for step, clock, acc in evals if clock <= seconds + 1e-9]
    return f"{seen[-1][1]:.3f} (step {seen[-1][0]})" if seen and evals[-1][1] >= seconds else "-"


def to_markdown(result: dict) -> str:
    trl, areal = result["trl"], result["areal"]
    lines = ["# areal vs TRL GRPOTrainer (arith_tiny, same model, task, held-out set, batch and lr)", ""]
    lines += [f"- {k}: {v}" for k, v in result["setup"].items()]
    lines += ["", "| | TRL GRPOTrainer | areal |", "|---|---|---|",
              f"| held-out accuracy at start | {trl['start_accuracy']:.3f} | {areal['start_accuracy']:.3f} |"]
    horizon = max(trl["evals"][-1][1], areal["evals"][-1][1])
    for seconds in (15, 30, 60, 90, 120, 180, 300):
        if seconds <= horizon:
            lines.append(f"| at {seconds} s of training | {accuracy_at(trl['evals'], seconds)} | "
                         f"{accuracy_at(areal['evals'], seconds)} |")
    lines += [f"| first eval >= {TARGET} | {fmt_reach(trl['reach_target'])} | {fmt_reach(areal['reach_target'])} |",
              f"| first eval >= start + 0.20 | {fmt_reach(trl['reach_plus_20'])} | "
              f"{fmt_reach(areal['reach_plus_20'])} |",
              f"| first eval >= start + 0.40 | {fmt_reach(trl['reach_plus_40'])} | "
              f"{fmt_reach(areal['reach_plus_40'])} |",
              f"| seconds per step (median / steady) | {trl['seconds_per_step']:.3f} | "
              f"{areal['seconds_per_step']:.3f} |",
              f"| final accuracy ({result['steps']} steps) | {trl['final_accuracy']:.3f} | "
              f"{areal['final_accuracy']:.3f} |",
              f"| wall seconds, start-up and evaluation included | {trl['wall_seconds_total']:.0f} | "
              f"{areal['wall_seconds_total']:.0f} (start-up {areal['startup_seconds']:.0f}) |", ""]
    lines += ["Learning per step (held-out accuracy at the same step):", "",
              "| step | TRL | areal |", "|---|---|---|"]
    areal_by_step = {step: acc for step, _, acc in areal["evals"]}
    for step, _, acc in trl["evals"]:
        if step in areal_by_step:
            lines.append(f"| {step} | {acc:.3f} | {areal_by_step[step]:.3f} |")
    lines += ["", "areal's step, median over steady steps (seconds):", ""]
    lines += [f"- {key}: {value:.3f}" for key, value in areal["step_breakdown_median"].items()]
    lines.append(f"- mean trained staleness: {areal['staleness_mean']:.2f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="train steps of each system")
    parser.add_argument("--eval-every", type=int, default=10, help="steps between held-out evaluations")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of TRL's process")
    parser.add_argument("--areal", nargs="*", default=[], help="extra areal overrides (default: none)")
    args = parser.parse_args()
    from launch.config_loader import load_config
    from launch.train import demo_model
    from rollouts.tasks.factory import make_task

    model = str(demo_model(0))
    cfg, _ = load_config(["experiment=arith_tiny"])
    task = make_task(cfg, model)
    trl = run_trl(model, cfg, task, args)
    areal = run_areal(model, args)
    result = {"setup": provenance(f"arith_tiny: {cfg.batch_size} prompts x {cfg.rollout.samples_per_prompt} samples, "
                                  f"lr {cfg.learner.lr}, {cfg.rollout.max_new_tokens} new tokens, temperature "
                                  f"{cfg.rollout.temperature}, held-out {cfg.task.eval_size}; TRL torch threads "
                                  f"{args.threads}"),
              "steps": args.steps, "target": TARGET, "trl": trl, "areal": areal}
    write_results("vs_trl", result, to_markdown(result))


if __name__ == "__main__":
    main()
