"""Agents with tools against the single-turn model, from the same warm-start budget and equal RL steps.

    python bench/agent.py                        # 3 seeds x 2 arms, ~22 min on 2 quiet cores
    python bench/agent.py --seeds 0 --steps 10   # a quick look

Task: 3-digit x 2-digit multiplication (the calc_tiny preset), which the tiny character model cannot do in
its head. Each seed warm-starts two tiny models with the same number of supervised steps on the same train
split: one on plain answers ("347*28=9716"), one on calculator transcripts ("[calculator 347*28]", the
environment's "{9716}", then "9716"). Each then runs the same number of asynchronous GRPO steps: the first
single-turn (env.type=none), the second in multi-turn episodes with the calculator in an environment worker.
Reported per arm: greedy held-out accuracy before and after RL (mean and spread over seeds), and for the
agent its tool-call rate and validity, the share of episode time spent in environments, rollout and
learner idle fractions, and the fraction of episodes whose policy tokens span more than one weight
version. Last, the sandbox: calls/s and p50/p95 latency of a trivial program at concurrency 2. Writes
bench/results/agent.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.provenance import provenance, write_results  # noqa: E402
from bench.training_run import train_and_read  # noqa: E402

TASK = dict(operators=("*",), min_operand=100, max_operand=999, min_operand_b=10, max_operand_b=99)
AGENT_METRICS = ("agent/tool_calls_mean", "agent/tool_call_validity_mean", "agent/env_share_mean",
                 "agent/multi_version_mean", "agent/turns_mean")
IDLE = ("rollout/idle_fraction", "learner/idle_fraction")


def warm_start(arm: str, seed: int, steps: int, root: Path) -> Path:
    """A tiny model after exactly ``steps`` supervised steps (no early stop) on the arm's transcripts."""
    from launch.bootstrap import bootstrap_model

    transcript = "calculator" if arm == "tools" else "answer"
    return bootstrap_model(root / f"{arm}-seed{seed}-{steps}", seed=seed, task_kwargs=TASK, transcript=transcript,
                           target_accuracy=1.01, max_steps=steps, eval_every=steps,
                           answer_suffix="" if arm == "tools" else "\n")


def run_arm(arm: str, seed: int, model: Path, args, out: Path) -> dict:
    overrides = ["experiment=calc_tiny", f"model_path={model}", f"seed={seed}", f"task.seed={seed}",
                 f"total_steps={args.steps}", f"eval_every={args.steps}"]
    if arm == "single":
        # A model that never gets a product right has only zero-variance groups: GRPO gives them no gradient
        # either way, and the preset's filter would refuse them until the run stalls, so this arm keeps them.
        # The agent arm runs as the preset does (filtered: its batches hold the groups that teach something).
        overrides += ["env.type=none", "rollout.max_new_tokens=8", "algo.filter_zero_variance=false"]
    else:
        overrides += args.overrides
    began = time.perf_counter()
    _, summary, rows = train_and_read(overrides, out / f"{arm}-seed{seed}")
    evals = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
    steps = [r for r in rows if "learner/loss" in r]
    means = {key: statistics.mean(r[key] for r in steps if key in r) for key in (*AGENT_METRICS, *IDLE)
             if any(key in r for r in steps)}
    return {"seed": seed, "accuracy_before": evals[0], "accuracy_after": evals[-1],
            "seconds": time.perf_counter() - began, **means}


def sandbox_latency(calls: int) -> dict:
    from rollouts.envs.sandbox import Sandbox

    sandbox = Sandbox()

    async def one() -> float:
        start = time.perf_counter()
        result = await sandbox.run_async("print(6 * 7)")
        if result.status != "ok" or result.stdout.strip() not in ("42", b"42"):
            raise RuntimeError(f"sandbox run failed: {result}")
        return time.perf_counter() - start

    async def run() -> tuple[list[float], float]:
        latencies, gate = [], asyncio.Semaphore(2)

        async def limited():
            async with gate:
                latencies.append(await one())

        start = time.perf_counter()
        await asyncio.gather(*(limited() for _ in range(calls)))
        return latencies, time.perf_counter() - start

    sandbox.run("print(1)")  # the first call pays the isolation probe, once per process
    latencies, seconds = asyncio.run(run())
    q = statistics.quantiles(latencies, n=20)
    return {"calls": calls, "concurrency": 2, "calls_per_s": calls / seconds, "p50_ms": statistics.median(latencies)
            * 1e3, "p95_ms": q[18] * 1e3}


def summarise(runs: list[dict]) -> dict:
    after = [r["accuracy_after"] for r in runs]
    gains = [r["accuracy_after"] - r["accuracy_before"] for r in runs]
    out = {"accuracy_before_mean": statistics.mean(r["accuracy_before"] for r in runs),
           "accuracy_after_mean": statistics.mean(after), "accuracy_after_spread": max(after) - min(after),
           "gain_mean": statistics.mean(gains), "gain_spread": max(gains) - min(gains), "gain_min": min(gains)}
    for key in (*AGENT_METRICS, *IDLE):
        if all(key in r for r in runs):
            out[key] = statistics.mean(r[key] for r in runs)
    return out


def to_markdown(result: dict) -> str:
    s = result["setup"]
    lines = ["# Agents with a calculator vs the single-turn model\n",
             f"`{s['command']}` at commit {s['commit']} ({s['time']}, {s['hardware']}); {s['workload']}\n",
             "| arm | seeds | held-out before | after (mean) | after spread | tool calls / episode | valid calls | "
             "env share | multi-version episodes | rollout idle | learner idle |", "|---" * 11 + "|"]
    for arm, summary in result["summary"].items():
        def f(key, fmt="{:.2f}"):
            return fmt.format(summary[key]) if key in summary else "-"
        lines.append(f"| {arm} | {len(result['runs'][arm])} | {summary['accuracy_before_mean']:.3f} | "
                     f"{summary['accuracy_after_mean']:.3f} | {summary['accuracy_after_spread']:.3f} | "
                     f"{f('agent/tool_calls_mean')} | {f('agent/tool_call_validity_mean')} | "
                     f"{f('agent/env_share_mean')} | {f('agent/multi_version_mean')} | "
                     f"{f('rollout/idle_fraction')} | {f('learner/idle_fraction')} |")
    for arm, summary in result["summary"].items():
        gains = ", ".join(f"{r['accuracy_after'] - r['accuracy_before']:+.3f}" for r in result["runs"][arm])
        lines.append(f"\n{arm}: RL gain per seed {gains}; mean {summary['gain_mean']:+.3f}, spread "
                     f"{summary['gain_spread']:.3f}, smallest {summary['gain_min']:+.3f}")
    margin = result["margin"]
    lines.append(f"\nagent minus single-turn after RL: {margin['after_mean_difference']:+.3f}, against a seed spread of "
                 f"{margin['largest_spread']:.3f} ({'larger' if margin['beats_spread'] else 'NOT larger'}).\n")
    sb = result["sandbox"]
    lines.append(f"Sandbox: {sb['calls']} calls of `print(6 * 7)` at concurrency 2: {sb['calls_per_s']:.1f} calls/s, "
                 f"p50 {sb['p50_ms']:.0f} ms, p95 {sb['p95_ms']:.0f} ms.\n")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--warm-steps", type=int, default=60, help="supervised steps of both warm starts")
    parser.add_argument("--steps", type=int, default=40, help="RL steps of both arms (the preset's 40)")
    parser.add_argument("--sandbox-calls", type=int, default=40)
    parser.add_argument("--out", default="agent", help="results stem under bench/results")
    parser.add_argument("--arms", default="single,tools", help="a trial of the agent's settings: tools alone")
    parser.add_argument("--overrides", nargs="*", default=[], help="on top of calc_tiny, for the agent arm")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs: dict[str, list[dict]] = {arm: [] for arm in args.arms.split(",")}
    with tempfile.TemporaryDirectory(prefix="areal-bench-agent-") as tmp:
        root = Path(tmp)
        for seed in seeds:
            for arm in runs:
                model = warm_start(arm, seed, args.warm_steps, root / "models")
                runs[arm].append(run_arm(arm, seed, model, args, root / "runs"))
                print(arm, runs[arm][-1], flush=True)
    summary = {arm: summarise(r) for arm, r in runs.items()}
    if "single" not in summary:  # a trial: the agent's gain per seed is the result
        print(summary, flush=True)
        return
    difference = summary["tools"]["accuracy_after_mean"] - summary["single"]["accuracy_after_mean"]
    spread = max(s["accuracy_after_spread"] for s in summary.values())
    workload = (f"calc_tiny (3-digit x 2-digit multiplication), seeds {args.seeds}, {args.warm_steps} warm-start "
                f"steps and {args.steps} GRPO steps per arm")
    result = {"setup": provenance(workload), "runs": runs, "summary": summary,
              "margin": {"after_mean_difference": difference, "largest_spread": spread,
                         "beats_spread": difference > spread},
              "sandbox": sandbox_latency(args.sandbox_calls)}
    write_results(args.out, result, to_markdown(result))


if __name__ == "__main__":
    main()
