"""One preset trained as its README paragraph describes it, summarised as a result file.

    python bench/preset_run.py smollm2_reasoning [OVERRIDES...]

Runs ``areal train experiment=PRESET`` (overrides on top) in this process and writes
bench/results/PRESET.{json,md}: every held-out set's metrics at each evaluation (accuracy, each reward
function, completion length, truncation), the seconds at each, the training seconds and the median learner
step, with the command and commit that produced them.
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


def held_out(rows: list[dict]) -> list[dict]:
    """The evaluation rows: step, seconds since the run began, and every eval/ metric but its timing."""
    return [{"step": r["step"], "elapsed_s": round(r.get("elapsed_s", 0.0)),
             **{k: v for k, v in r.items() if k.startswith("eval/") and k != "eval/seconds"}}
            for r in rows if "eval/reward" in r]


def to_markdown(result: dict) -> str:
    lines = [f"# `{result['preset']}` on this machine", ""]
    lines += [f"- {k}: {v}" for k, v in result["setup"].items()]
    evals = result["evaluations"]
    keys = [k for k in evals[0] if k.endswith(("/accuracy", "/length_mean", "/truncated")) or "/reward/" in k]
    lines += ["", "| step | seconds | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for e in evals:
        lines.append(f"| {e['step']} | {e['elapsed_s']} | " + " | ".join(f"{e.get(k, float('nan')):.3f}" for k in keys)
                     + " |")
    s = result["summary"]
    lines += ["", f"- training seconds: {s['seconds']:.0f} (train loop {s['train_loop_seconds']:.0f}); "
                  f"learner step median {s['learner_step_median_s']:.1f} s; groups {s['outcomes']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix=f"areal-bench-{args.preset}-") as tmp:
        cfg, summary, rows = train_and_read([f"experiment={args.preset}", *args.overrides], Path(tmp) / "run")
    steps = [r["learner/step_seconds"] for r in rows if "learner/step_seconds" in r]
    result = {
        "setup": provenance(f"experiment={args.preset} {' '.join(args.overrides)}".strip()),
        "preset": args.preset,
        "evaluations": held_out(rows),
        "summary": {"seconds": summary["seconds"], "train_loop_seconds": summary["train_loop_seconds"],
                    "learner_step_median_s": statistics.median(steps) if steps else float("nan"),
                    "outcomes": summary["outcomes"], "steps": summary["steps"]},
    }
    write_results(args.preset, result, to_markdown(result))


if __name__ == "__main__":
    main()
