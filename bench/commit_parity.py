"""Does this commit learn as an earlier one did, per step and per second, on the same preset and seeds?

    python bench/commit_parity.py --baseline 5c94ae5 [--seeds 0 1] [--steps 150] [--eval-every 10]
                                  [--overrides KEY=VALUE ...]

Each arm is ``areal train`` in its own process from a git worktree of its commit (the baseline's
in a temporary one, this one's from the checkout), one after the other, alternating by seed so
that a slow spell of the machine falls on both. Reports held-out accuracy at each evaluation,
seconds per steady step and the learner step's median breakdown for every (commit, seed).
Written for issue 30: the new loss terms off must leave arith_tiny's learning and step time as
they were before them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.provenance import provenance, write_results  # noqa: E402
from bench.training_run import QUIET, steady_steps  # noqa: E402

BREAKDOWN = ("learner/step_seconds", "learner/proximal_seconds", "learner/forward_backward_seconds",
             "learner/optimizer_seconds", "rollout/engine_seconds_mean")


def run_arm(tree: Path, out_dir: Path, overrides: list[str]) -> list[dict]:
    """``areal train`` with ``tree``'s code (PYTHONPATH, so Ray's workers import it too); its metrics rows."""
    shutil.rmtree(out_dir, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "launch.cli", "train", *overrides, f"out_dir={out_dir}", *QUIET]
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{tree.name}: areal train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def summarize(rows: list[dict]) -> dict:
    evals = [(int(r["step"]), r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    _, per_step, breakdown = steady_steps(rows, BREAKDOWN)
    return {"evals": evals, "seconds_per_step": per_step, "breakdown": breakdown}


def to_markdown(result: dict) -> str:
    base, head = result["baseline"], result["head"]
    lines = [f"# Learning per step and step time: {head} against {base}", ""]
    lines += [f"- {k}: {v}" for k, v in result["setup"].items()] + [""]
    for seed, arms in result["seeds"].items():
        lines += [f"## seed {seed}", "", f"| step | {base} | {head} |", "|---|---|---|"]
        head_by_step = dict(arms["head"]["evals"])
        lines += [f"| {step} | {acc:.3f} | {head_by_step[step]:.3f} |"
                  for step, acc in arms["baseline"]["evals"] if step in head_by_step]
        lines += ["", f"| seconds (median of steady steps) | {base} | {head} |", "|---|---|---|",
                  f"| wall per step | {arms['baseline']['seconds_per_step']:.3f} | "
                  f"{arms['head']['seconds_per_step']:.3f} |"]
        lines += [f"| {k} | {arms['baseline']['breakdown'].get(k, float('nan')):.3f} | {v:.3f} |"
                  for k, v in arms["head"]["breakdown"].items()]
        lines.append("")
    mean = {arm: statistics.mean(statistics.mean(a for _, a in arms[arm]["evals"][1:])
                                 for arms in result["seeds"].values()) for arm in ("baseline", "head")}
    step = {arm: statistics.mean(arms[arm]["seconds_per_step"] for arms in result["seeds"].values())
            for arm in ("baseline", "head")}
    lines += ["## over seeds", "",
              f"- mean held-out accuracy over evaluations after the start: {base} {mean['baseline']:.3f}, "
              f"{head} {mean['head']:.3f} (difference {mean['head'] - mean['baseline']:+.3f})",
              f"- seconds per step: {base} {step['baseline']:.3f}, {head} {step['head']:.3f} "
              f"(ratio {step['head'] / step['baseline']:.3f})", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="commit to compare this checkout with")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--experiment", default="arith_tiny")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra overrides for both arms")
    parser.add_argument("--stem", default="commit_parity", help="result file name under bench/results")
    args = parser.parse_args()
    base = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    setup = provenance(f"{args.experiment}, {args.steps} steps, held-out every {args.eval_every}, "
                       f"overrides {args.overrides or 'none'}")
    head = setup["commit"]
    work = Path(tempfile.mkdtemp(prefix="areal-parity-"))
    tree = work / f"tree-{base}"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), base], cwd=ROOT, check=True,
                   capture_output=True)
    seeds: dict[int, dict] = {}
    try:
        for i, seed in enumerate(args.seeds):
            overrides = [f"experiment={args.experiment}", f"seed={seed}", f"total_steps={args.steps}",
                         f"eval_every={args.eval_every}", *args.overrides]
            order = [("baseline", tree), ("head", ROOT)]
            arms = {}
            for name, code in (order if i % 2 == 0 else order[::-1]):
                arms[name] = summarize(run_arm(code, work / f"{name}-{seed}", overrides))
                print(f"seed {seed} {name}: {arms[name]['evals'][-1]}, {arms[name]['seconds_per_step']:.3f} s/step",
                      flush=True)
            seeds[seed] = arms
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    result = {"setup": setup, "baseline": base, "head": head, "seeds": seeds}
    write_results(args.stem, result, to_markdown(result))


if __name__ == "__main__":
    main()
