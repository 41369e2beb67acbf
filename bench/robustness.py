"""Byzantine robustness of the learner group on the tiny arithmetic RL run, in one invocation.

    python bench/robustness.py [--steps 30] [--attacks reverse little_is_enough] [--aggregators ...]

Five data-parallel DeepSpeed learners train arith_tiny with asynchronous GRPO from the same
warm start (the newline-terminated one of bench/async_speedup.py) and seed. Learner rank 4 is
Byzantine (``learner.byzantine``; omniscient attacker):
"reverse" sends -10 x its gradient, "a little is enough" sends mean - 0.21 std of all honest
gradients. Every aggregator runs under every attack with f = 1, plus the attack-free mean.

Prints, per run: held-out accuracy before and after, and the per-step cost of combining gradients
(``learner/exchange_seconds`` less the time spent simulating the attacker: all-gather +
aggregation for robust rules, DeepSpeed's all-reduce for the clean mean; measured inside the
run, sync waits included) as a ratio to the clean all-reduce. Writes bench/results/robustness.{json,md} and robustness.png (accuracy over steps).
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
WORKERS, BYZANTINE_RANK, F = 5, 4, 1
AGGREGATORS = ["mean", "flag", "coordinate_median", "trimmed_mean", "krum", "multi_krum", "geometric_median",
               "bulyan"]


def run_one(model_path: str, aggregator: str, attack: str | None, steps: int, out_dir: Path) -> dict:
    overrides = [
        "experiment=arith_tiny", f"model_path={model_path}", f"total_steps={steps}",
        f"eval_every={max(1, steps // 6)}", f"learner.workers={WORKERS}", f"learner.aggregator={aggregator}",
        "learner.num_cpus=0.25",
    ]
    if aggregator != "mean":
        overrides.append(f"learner.aggregator_f={F}")
    if attack:
        overrides += [f"learner.byzantine.ranks=[{BYZANTINE_RANK}]", f"learner.byzantine.attack={attack}"]
    _, summary, rows = train_and_read(overrides, out_dir)
    exchange = [r["learner/exchange_seconds"] - r.get("learner/aggregation_attack_seconds", 0.0)
                for r in rows if "learner/exchange_seconds" in r]
    return {
        "aggregator": aggregator, "attack": attack or "none",
        "initial_accuracy": summary["initial_eval"], "final_accuracy": summary["final_eval"],
        "accuracy_curve": [[r["step"], r["eval/accuracy"]] for r in rows if "eval/accuracy" in r],
        "exchange_seconds_mean": sum(exchange) / len(exchange),
        "step_seconds_mean": sum(r["learner/step_seconds"] for r in rows if "learner/exchange_seconds" in r)
        / len(exchange),
        "train_loop_seconds": summary["train_loop_seconds"],
    }


def not_applicable(aggregator: str) -> str:
    """Why a rule cannot run with WORKERS learners and f = F, or '' if it can."""
    from areal.aggregation.bucketed import check_rule

    try:
        check_rule(aggregator, WORKERS, F)
    except ValueError as exc:
        return str(exc).split(" (")[0].replace(f"learner.aggregator={aggregator} ", "")
    return ""


def to_markdown(result: dict) -> str:
    lines = ["# Byzantine robustness: 5 DeepSpeed learners, rank 4 Byzantine (arith_tiny, async GRPO)", ""]
    lines += [f"- {k}: {v}" for k, v in result["setup"].items()]
    base = next(r for r in result["runs"] if r["attack"] == "none")["exchange_seconds_mean"]
    lines += ["", "| attack | aggregator | held-out accuracy before -> after | combine s/step | cost vs all-reduce |",
              "|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['attack']} | {r['aggregator']} | {r['initial_accuracy']:.3f} -> {r['final_accuracy']:.3f}"
                     f" | {r['exchange_seconds_mean']:.4f} | {r['exchange_seconds_mean'] / base:.2f}x |")
    for skipped in result["skipped"]:
        lines.append(f"| {skipped['attack']} | {skipped['aggregator']} | not run: {skipped['why']} | | |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = [a for a in dict.fromkeys(r["attack"] for r in result["runs"]) if a != "none"]
    clean = next(r for r in result["runs"] if r["attack"] == "none")
    fig, axes = plt.subplots(1, len(attacks), figsize=(6 * len(attacks), 4.5), squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        for r in [clean] + [r for r in result["runs"] if r["attack"] == attack]:
            steps, acc = zip(*r["accuracy_curve"])
            label = "mean, no attack" if r is clean else r["aggregator"]
            ax.plot(steps, acc, marker="o", ms=3, label=label, lw=2.5 if r is clean else 1.5,
                    ls="--" if r is clean else "-")
        ax.set(title=f"attack: {attack} (rank {BYZANTINE_RANK} of {WORKERS})", xlabel="train step",
               ylabel="held-out accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="train steps per run")
    parser.add_argument("--attacks", nargs="+", default=["reverse", "little_is_enough"])
    parser.add_argument("--aggregators", nargs="+", default=AGGREGATORS)
    args = parser.parse_args()
    import ray

    from launch.train import demo_model

    model = str(demo_model(0))
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)  # one Ray for every run
    runs_dir = ROOT / "runs" / "bench_robustness"
    runs = [run_one(model, "mean", None, args.steps, runs_dir / "clean-mean")]
    skipped = []
    for attack in args.attacks:
        for aggregator in args.aggregators:
            why = not_applicable(aggregator)
            if why:
                skipped.append({"attack": attack, "aggregator": aggregator, "why": why})
                continue
            runs.append(run_one(model, aggregator, attack, args.steps, runs_dir / f"{attack}-{aggregator}"))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "accuracy_curve"}), flush=True)
    ray.shutdown()
    result = {
        "setup": provenance(
            f"arith_tiny, {args.steps} steps x 16 groups x 8 samples, {WORKERS} learners (gloo, ZeRO-0), f={F}, "
            f"rank {BYZANTINE_RANK} Byzantine (omniscient), 1 vLLM rollout worker",
            hardware_note=f"CPU only ({WORKERS} learners and the engine share them)"),
        "runs": runs,
        "skipped": skipped,
    }
    write_results("robustness", result, to_markdown(result))
    plot(result, RESULTS / "robustness.png")

if __name__ == "__main__":
    main()
