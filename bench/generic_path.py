"""The same learning through the path a user's data takes: built-in arithmetic vs the same problems from parquet.

    python bench/generic_path.py [--seeds 0 1] [--steps 100]

For each seed, two arith_tiny runs from the same warm start: the built-in task (generated problems, its own
exact-answer rule), and ``task.type=dataset`` reading the very same train and held-out problems from parquet
files, scored by ``bench/arith_reward.py:exact_answer``, a TRL-style function doing the same rule. Everything
else is equal (seed, prompts and their order, batch shape, learning rate). Reports held-out accuracy before and
after and at each evaluation, and the training loop's seconds. Writes bench/results/generic_path.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.provenance import provenance, write_results  # noqa: E402
from bench.training_run import train_and_read  # noqa: E402


def write_split(samples, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": s.prompt, "answer": s.reference} for s in samples]), path)


def run_one(arm: str, seed: int, steps: int, data: Path, out: Path) -> dict:
    extra = [] if arm == "built-in" else [
        "task.type=dataset", f"task.path={data / 'train.parquet'}", f"task.eval_path={data / 'test.parquet'}",
        f"task.rewards=[{ROOT / 'bench' / 'arith_reward.py'}:exact_answer]"]
    _, summary, rows = train_and_read(["experiment=arith_tiny", f"seed={seed}", f"total_steps={steps}", *extra], out)
    curve = {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}
    return {"arm": arm, "seed": seed, "initial": summary["initial_eval"], "final": summary["final_eval"],
            "curve": curve, "train_loop_seconds": round(summary["train_loop_seconds"], 1)}


def to_markdown(result: dict) -> str:
    lines = ["# Built-in arithmetic vs the same problems as a parquet dataset with a TRL-style reward", ""]
    lines += [f"- {k}: {v}" for k, v in result["setup"].items()]
    steps = sorted({int(s) for run in result["runs"] for s in run["curve"]})
    lines += ["", "| arm | seed | " + " | ".join(f"step {s}" for s in steps) + " | train loop s |",
              "|---|---|" + "---|" * (len(steps) + 1)]
    for run in result["runs"]:
        cells = " | ".join(f"{run['curve'].get(s, float('nan')):.3f}" for s in steps)
        lines.append(f"| {run['arm']} | {run['seed']} | {cells} | {run['train_loop_seconds']} |")
    lines += ["", "| arm | mean final accuracy | mean gain |", "|---|---|---|"]
    for arm, stats in result["summary"].items():
        lines.append(f"| {arm} | {stats['final_mean']:.3f} | {stats['gain_mean']:+.3f} |")
    lines += ["", f"Difference of the mean final accuracies (dataset - built-in): {result['difference']:+.3f}; "
                  f"seed spread within an arm: {result['seed_spread']:.3f}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    from launch.config_loader import load_config
    from rollouts.tasks.factory import make_task

    cfg, _ = load_config(["experiment=arith_tiny"])
    task = make_task(cfg)
    runs = []
    with tempfile.TemporaryDirectory(prefix="areal-bench-generic-") as tmp:
        data = Path(tmp)
        write_split(task.train, data / "train.parquet")
        write_split(task.eval, data / "test.parquet")
        for seed in args.seeds:
            for arm in ("built-in", "dataset"):
                runs.append(run_one(arm, seed, args.steps, data, data / f"{arm}-{seed}"))
                print(runs[-1], flush=True)
    summary = {}
    for arm in ("built-in", "dataset"):
        finals = [r["final"] for r in runs if r["arm"] == arm]
        gains = [r["final"] - r["initial"] for r in runs if r["arm"] == arm]
        summary[arm] = {"final_mean": statistics.mean(finals), "gain_mean": statistics.mean(gains),
                        "final_spread": max(finals) - min(finals)}
    result = {"setup": provenance(f"arith_tiny, {args.steps} steps, seeds {args.seeds}, both arms"), "runs": runs,
              "summary": summary, "difference": summary["dataset"]["final_mean"] - summary["built-in"]["final_mean"],
              "seed_spread": max(s["final_spread"] for s in summary.values())}
    write_results("generic_path", result, to_markdown(result))


if __name__ == "__main__":
    main()
