"""areal against TRL's synchronous GRPOTrainer on the same model and tasks, in one invocation.

    python bench/vs_trl.py [--presets arith_tiny longtail_tiny] [--arms trl trl_vllm areal_sync areal]
                           [--steps N ...] [--eval-every 10] [--threads 2] [--areal KEY=VALUE ...]
    python bench/vs_trl.py --render bench/results/vs_trl.json   # the report again, from the saved numbers

For each preset, every arm starts from the preset's bootstrapped model and trains on its task,
held-out set (greedy, exact answer), batch shape (16 prompts x 8 samples), learning rate and
completion budget:

- ``trl``: TRL's GRPOTrainer as a CPU user runs it, Hugging Face ``generate`` in its process
  (``bench/trl_baseline.py``);
- ``trl_vllm``: the same with vLLM in colocate mode (``use_vllm=True``), as a GPU user runs it;
  if TRL or vLLM refuses to run here, the arm records the error instead;
- ``areal_sync``: ``areal train experiment=PRESET algo.max_staleness=0``;
- ``areal``: ``areal train experiment=PRESET`` with its defaults (asynchronous).

``arith_tiny``'s answers are 3-6 tokens, all alike; ``longtail_tiny``'s are 2 to 270, long-tailed
by nature (rollouts/tasks/skip_count.py): where a synchronous trainer waits on each batch's longest.

The clock is training wall-clock: evaluation time is taken out (TRL's clock stops while it
evaluates; areal's rows carry ``eval/seconds``, subtracted). Start-up (model load, Ray, engine)
is outside the clock and reported apart. Reported per arm: held-out accuracy against the clock and
per step, the first time it reaches the preset's target, seconds per step, effective tokens per
second (completion tokens trained on per training second), the engine's busy fraction and the
learner's idle fraction (TRL: the share of its clock spent generating, when it does nothing
else), and where a step's time goes. Writes bench/results/vs_trl.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.provenance import provenance, write_results  # noqa: E402
from bench.training_run import steady_steps, train_and_read  # noqa: E402

# arith_tiny: the level TRL reached in ~110 s when this comparison was first made (issue 16). longtail_tiny:
# from its warm start's 0.215 the tiny model climbs to ~0.28 in 10 steps and plateaus near 0.29 (every arm alike,
# TRL included): the target is the climb, read at the first evaluations
TARGETS = {"arith_tiny": 0.77, "longtail_tiny": 0.27}
STEPS = {"arith_tiny": 150, "longtail_tiny": 40}
ARMS = {"trl": "TRL GRPOTrainer (generate)", "trl_vllm": "TRL GRPOTrainer (vLLM colocate)",
        "areal_sync": "areal synchronous (max_staleness=0)", "areal": "areal (asynchronous, defaults)"}
BREAKDOWN = ("learner/step_seconds", "learner/proximal_seconds", "learner/forward_backward_seconds",
             "learner/optimizer_seconds", "learner/exchange_seconds", "learner/gap_seconds_mean",
             "weights/export_seconds_mean", "driver/batch_seconds_mean", "weights/sync_seconds",
             "rollout/latency_mean", "rollout/engine_seconds_mean", "rollout/reward_seconds_mean",
             "rollout/queue_seconds_mean")


def first_reaching(evals: list, level: float) -> tuple[int, float] | None:
    """(step, clock seconds) of the first evaluation at or above ``level``."""
    return next(((step, clock) for step, clock, acc in evals if acc >= level - 1e-9), None)


def summarize(name: str, evals: list, target: float, **extra) -> dict:
    start = evals[0][2]
    return {"system": name, "evals": [list(e) for e in evals], "start_accuracy": start,
            "final_accuracy": evals[-1][2], "reach_target": first_reaching(evals, target),
            "reach_plus_20": first_reaching(evals, start + 0.20), **extra}


def run_trl(preset: str, model: str, cfg, task, args, steps: int, vllm: bool) -> dict:
    from bench.trl_baseline import run_trl as train_trl

    begun = time.perf_counter()
    out = train_trl(model, task, steps, args.eval_every, cfg.batch_size, cfg.rollout.samples_per_prompt,
                    cfg.learner.lr, cfg.rollout.max_new_tokens, args.threads, cfg.seed,
                    str(ROOT / "runs" / f"bench_trl_{preset}"), vllm=vllm, max_model_len=cfg.engine.max_model_len)
    train_s, generating = out["train_seconds"], out["generate_seconds"]
    return summarize(ARMS["trl_vllm" if vllm else "trl"], out["evals"], TARGETS[preset],
                     seconds_per_step=out["step_seconds_median"], wall_seconds_total=time.perf_counter() - begun,
                     train_seconds=train_s, effective_tokens_per_s=out["completion_tokens"] / train_s,
                     engine_busy_fraction=generating / train_s, learner_idle_fraction=generating / train_s,
                     step_breakdown={"generate seconds per step": generating / out["steps"],
                                     "score + train seconds per step": (train_s - generating) / out["steps"]})


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


def run_areal(preset: str, model: str, args, steps: int, sync: bool) -> dict:
    begun = time.perf_counter()
    name = "areal_sync" if sync else "areal"
    _, summary, rows = train_and_read([f"experiment={preset}", f"model_path={model}", f"total_steps={steps}",
                                       f"eval_every={args.eval_every}", *(["algo.max_staleness=0"] if sync else []),
                                       *args.areal], ROOT / "runs" / f"bench_vs_trl_{preset}_{name}")
    wall = time.perf_counter() - begun
    evals = areal_clock(rows, "eval/accuracy")
    trained = [r for r in rows if "learner/step_seconds" in r]
    steady, per_step, breakdown = steady_steps(rows, BREAKDOWN)
    return summarize(ARMS[name], evals, TARGETS[preset], seconds_per_step=per_step, wall_seconds_total=wall,
                     startup_seconds=wall - summary["seconds"], train_seconds=evals[-1][1],
                     effective_tokens_per_s=sum(r["learner/tokens"] for r in trained) / evals[-1][1],
                     engine_busy_fraction=statistics.mean(1.0 - r["rollout/idle_fraction"] for r in trained),
                     learner_idle_fraction=statistics.mean(r["learner/idle_fraction"] for r in trained),
                     staleness_mean=statistics.mean(r.get("staleness/mean", 0.0) for r in steady),
                     step_breakdown=breakdown, overrides=args.areal)


def run_arm(arm: str, preset: str, model: str, cfg, task, args, steps: int) -> dict:
    """One arm; an arm that cannot run here records why instead of ending the comparison."""
    try:
        if arm.startswith("trl"):
            return run_trl(preset, model, cfg, task, args, steps, vllm=arm == "trl_vllm")
        return run_areal(preset, model, args, steps, sync=arm == "areal_sync")
    except Exception as exc:  # noqa: BLE001 (reported in the results, with its traceback's end)
        lines = traceback.format_exception(exc)
        return {"system": ARMS[arm], "error": f"{type(exc).__name__}: {exc}"[:600],
                "traceback_tail": "".join(lines)[-2000:]}


def fmt_reach(reach) -> str:
    return "not reached" if reach is None else f"{reach[1]:.0f} s (step {reach[0]})"


def ratio(a: dict, b: dict, key: str = "reach_target") -> str:
    """How many times sooner ``a`` reached the level of ``key`` than ``b`` (``a`` reached it)."""
    if not b.get(key):
        return f"> {b['train_seconds'] / a[key][1]:.1f}x (not reached in {b['train_seconds']:.0f} s)"
    return f"{b[key][1] / a[key][1]:.2f}x"


def preset_markdown(preset: str, block: dict) -> list[str]:
    arms = [a for a in block["arms"].values()]
    ran = [a for a in arms if "error" not in a]
    lines = [f"## {preset} ({block['workload']})", "",
             "| | " + " | ".join(a["system"] for a in ran) + " |", "|---|" + "---|" * len(ran)]

    def row(label, fmt):
        lines.append(f"| {label} | " + " | ".join(fmt(a) for a in ran) + " |")

    row("held-out accuracy at start", lambda a: f"{a['start_accuracy']:.3f}")
    row(f"first eval >= {block['target']} (training clock)", lambda a: fmt_reach(a["reach_target"]))
    row("first eval >= start + 0.20", lambda a: fmt_reach(a["reach_plus_20"]))
    row(f"final accuracy ({block['steps']} steps)", lambda a: f"{a['final_accuracy']:.3f}")
    row("seconds per step", lambda a: f"{a['seconds_per_step']:.3f}")
    row("effective tokens/s (completion tokens trained)", lambda a: f"{a['effective_tokens_per_s']:.0f}")
    row("engine busy fraction", lambda a: f"{a['engine_busy_fraction']:.2f}")
    row("learner idle fraction", lambda a: f"{a['learner_idle_fraction']:.2f}")
    row("wall seconds, start-up and evaluation included",
        lambda a: f"{a['wall_seconds_total']:.0f}" + (f" (start-up {a['startup_seconds']:.0f})"
                                                       if "startup_seconds" in a else ""))
    lines.append("")
    for a in arms:
        if "error" in a:
            lines += [f"{a['system']} did not run here: `{a['error']}`", ""]
    by = block["arms"]
    if "areal" in by and "error" not in by["areal"]:
        trls = [by[k] for k in ("trl", "trl_vllm") if k in by and "error" not in by[k]]
        for key, level in (("reach_target", f"{block['target']}"), ("reach_plus_20", "start + 0.20")):
            faster_trl = min(trls, key=lambda a: a[key][1] if a[key] else float("inf"), default=None)
            if not by["areal"].get(key):
                lines.append(f"- areal did not reach {level} in {block['steps']} steps")
                continue
            if faster_trl:
                lines.append(f"- areal reached {level} {ratio(by['areal'], faster_trl, key)} sooner than the faster "
                             f"TRL mode ({faster_trl['system']})")
            if "areal_sync" in by and "error" not in by["areal_sync"]:
                lines.append(f"- areal reached {level} {ratio(by['areal'], by['areal_sync'], key)} sooner than areal "
                             "synchronous")
        lines.append("")
    lines += ["Learning per step (held-out accuracy at the same step):", "",
              "| step | " + " | ".join(a["system"] for a in ran) + " |", "|---|" + "---|" * len(ran)]
    steps = sorted({e[0] for a in ran for e in a["evals"]})
    for step in steps:
        cells = [next((f"{e[2]:.3f}" for e in a["evals"] if e[0] == step), "-") for a in ran]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += ["", "Where a step's time goes (median of steady steps, seconds):", ""]
    for a in ran:
        lines.append(f"- {a['system']}: " + ", ".join(f"{k} {v:.3f}" for k, v in a["step_breakdown"].items()) +
                     (f"; mean trained staleness {a['staleness_mean']:.2f}" if "staleness_mean" in a else ""))
    return lines + [""]


def to_markdown(result: dict) -> str:
    lines = ["# areal vs TRL GRPOTrainer: same model, task, held-out set, batch and learning rate", ""]
    lines += [f"- {k}: {v}" for k, v in result["setup"].items()] + [""]
    for preset, block in result["presets"].items():
        lines += preset_markdown(preset, block)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--steps", type=int, nargs="*", default=[], help="train steps per preset (default: "
                        + ", ".join(f"{p} {s}" for p, s in STEPS.items()) + ")")
    parser.add_argument("--eval-every", type=int, default=10, help="steps between held-out evaluations")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of TRL's process")
    parser.add_argument("--areal", nargs="*", default=[], help="extra areal overrides (default: none)")
    parser.add_argument("--render", metavar="JSON", help="no runs: write the markdown of a saved result again "
                        "(bench/results/vs_trl.json) with this checkout's report")
    args = parser.parse_args()
    if args.render:
        result = json.loads(Path(args.render).read_text())
        write_results("vs_trl", result, to_markdown(result))
        return
    from launch.config_loader import load_config
    from launch.train import resolve_model
    from rollouts.tasks.factory import make_task

    steps_of = dict(STEPS, **dict(zip(args.presets, args.steps)))
    presets = {}
    for preset in args.presets:
        cfg, _ = load_config([f"experiment={preset}"])
        model = resolve_model(cfg)
        task = make_task(cfg, model)
        steps = steps_of[preset]
        arms = {arm: run_arm(arm, preset, model, cfg, task, args, steps) for arm in args.arms}
        presets[preset] = {
            "workload": f"{cfg.batch_size} prompts x {cfg.rollout.samples_per_prompt} samples, lr {cfg.learner.lr}, "
                        f"{cfg.rollout.max_new_tokens} new tokens at most, temperature {cfg.rollout.temperature}, "
                        f"held-out {cfg.task.eval_size}",
            "target": TARGETS[preset], "steps": steps, "arms": arms}
    result = {"setup": provenance(f"presets {', '.join(args.presets)}; arms {', '.join(args.arms)}; TRL torch threads "
                                  f"{args.threads}"), "presets": presets}
    write_results("vs_trl", result, to_markdown(result))


if __name__ == "__main__":
    main()
