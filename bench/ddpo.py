"""Synchronous vs asynchronous DDPO on the tiny class-conditional UNet, in one invocation.

    python bench/ddpo.py [--steps 60] [--staleness 0 2]

Runs experiment ddpo_tiny (JPEG compressibility) once per max_staleness from the same
bootstrapped pipeline and seed: 0 is synchronous (the sampler waits for the learner and
the learner for the sampler), > 0 lets sampling run ahead by that many versions. Both
train on the same number of images (steps x batch_size x samples_per_prompt).

Prints and writes (bench/results/ddpo.{json,md,png}): trained images per second of the
training loop and its ratio to synchronous, sampler and learner idle fractions, mean
staleness, and the held-out reward (fixed-seed images) before and after; the figure is the
reward of the sampled images against images trained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.provenance import provenance, write_results  # noqa: E402
from bench.training_run import train_and_read  # noqa: E402


def run_one(model_path: str, eta: int, steps: int, out_dir: Path) -> dict:
    cfg, summary, rows = train_and_read([
        "experiment=ddpo_tiny", f"model_path={model_path}", f"total_steps={steps}", f"algo.max_staleness={eta}",
        "eval_every=0",
    ], out_dir)
    trained = [r for r in rows if "learner/loss" in r]
    per_step = cfg.batch_size * cfg.rollout.samples_per_prompt
    steady = trained[1:] or trained  # the first step includes start-up
    mean = lambda key: sum(r.get(key, 0.0) for r in steady) / len(steady)  # noqa: E731
    return {
        "max_staleness": eta,
        "steps": summary["steps"],
        "images_trained": summary["steps"] * per_step,
        "train_loop_seconds": summary["train_loop_seconds"],
        "images_per_s": summary["steps"] * per_step / summary["train_loop_seconds"],
        "sampler_idle": mean("rollout/idle_fraction"),
        "learner_idle": mean("learner/idle_fraction"),
        "staleness_mean": mean("staleness/mean"),
        "initial_reward": summary["initial_eval"],
        "final_reward": summary["final_eval"],
        "curve": [(i * per_step, r["rollout/reward_mean"]) for i, r in enumerate(trained, 1)],
    }


def to_markdown(result: dict) -> str:
    lines = ["# Synchronous vs asynchronous DDPO (ddpo_tiny: JPEG compressibility, tiny class-conditional UNet)", ""]
    lines += [f"- {k}: {v}" for k, v in result["setup"].items()]
    lines += ["", "| max_staleness | images trained | images/s | ratio to sync | sampler idle | learner idle | "
              "mean staleness | held-out reward before -> after |", "|---|---|---|---|---|---|---|---|"]
    base = result["runs"][0]["images_per_s"]
    for r in result["runs"]:
        lines.append(f"| {r['max_staleness']} | {r['images_trained']} | {r['images_per_s']:.1f} | "
                     f"{r['images_per_s'] / base:.2f}x | {r['sampler_idle']:.2f} | {r['learner_idle']:.2f} | "
                     f"{r['staleness_mean']:.2f} | {r['initial_reward']:.3f} -> {r['final_reward']:.3f} |")
    lines += ["", "Reward: negative JPEG size in kB (quality 95) of each image; higher is more compressible.",
              "![reward curve](ddpo.png)"]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in result["runs"]:
        xs, ys = zip(*r["curve"])
        label = "synchronous" if r["max_staleness"] == 0 else f"asynchronous (max_staleness={r['max_staleness']})"
        ax.plot(xs, ys, label=f"{label}, {r['images_per_s']:.1f} images/s")
    ax.set_xlabel("images trained")
    ax.set_ylabel("reward of sampled images (-kB)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="train steps per setting")
    parser.add_argument("--staleness", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    from launch.diffusion_bootstrap import bootstrap_diffusion, diffusion_model_dir

    model = bootstrap_diffusion(diffusion_model_dir(0, 32), seed=0)
    runs = [run_one(str(model), eta, args.steps, ROOT / "runs" / "bench_ddpo" / f"eta{eta}")
            for eta in sorted(args.staleness)]
    result = {"setup": provenance(f"ddpo_tiny, {args.steps} steps x 4 prompts x 8 images, 10 DDIM steps, "
                                  "1 sampler + 1 learner actor"), "runs": runs}
    plot(result, ROOT / "bench" / "results" / "ddpo.png")
    write_results("ddpo", result, to_markdown(result))


if __name__ == "__main__":
    main()
