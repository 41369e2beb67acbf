"""A million-row dataset: how long until training starts, and what it adds to the driver's memory.

    python bench/dataset_load.py [--rows 1000000]

Writes a parquet file of ``--rows`` arithmetic prompts (a prompt and an answer column, as a user's data) and
runs, as separate `areal train` processes, the built-in arithmetic task (the baseline) and the same run
reading that file (``task.type=dataset``), two train steps each. For both it reports the seconds from the
process's start to its first train step and the driver's peak resident memory (VmHWM); the difference is what
the dataset costs. It also times the load alone in this process (reading, checking every row, the length
filter), for string prompts and, when SmolLM2 is cached (``areal bootstrap --kind smollm2``), for chat prompts.
Each `areal train` arm runs twice, alternated, and the faster of its two is reported (both are in the JSON).
Writes bench/results/dataset_load.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.provenance import provenance, write_results  # noqa: E402

QUIET = ["logging.wandb_mode=disabled", "logging.tensorboard=false", "logging.progress=false"]
RUN = ["experiment=arith_tiny", "total_steps=2", "eval_every=0", "task.eval_size=16", *QUIET]


def write_rows(path: Path, rows: int, chat: bool) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    a, b = rng.integers(10, 100, rows), rng.integers(10, 100, rows)
    prompts = [f"{x}+{y}=" for x, y in zip(a.tolist(), b.tolist())]
    answers = pa.array((a + b).astype(str))
    if chat:
        turns = [[{"role": "system", "content": "Answer with the number only."},
                  {"role": "user", "content": f"What is {p[:-1]}?"}] for p in prompts]
        table = pa.table({"prompt": turns, "answer": answers})
    else:
        table = pa.table({"prompt": prompts, "answer": answers})
    pq.write_table(table, path)


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def time_to_first_step(overrides: list[str], out_dir: Path, timeout_s: float = 900.0) -> dict:
    """Run `areal train` as its own process; seconds until metrics.jsonl has a train step, and peak RSS."""
    metrics = out_dir / "metrics.jsonl"
    cmd = [sys.executable, "-m", "launch.cli", "train", *overrides, f"out_dir={out_dir}"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first, peak = None, 0.0
    while proc.poll() is None and time.monotonic() - started < timeout_s:
        peak = max(peak, peak_rss_mb(proc.pid))
        if first is None and metrics.exists() and any("learner/loss" in line for line in metrics.open()):
            first = time.monotonic() - started
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
    _, err = proc.communicate()
    if proc.returncode != 0 or first is None:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {err[-2000:]}")
    return {"seconds_to_first_step": round(first, 1), "driver_peak_rss_mb": round(peak)}


def load_alone(path: Path, model_path: str, rows: int) -> dict:
    """Seconds and resident memory of building the task in a fresh process."""
    code = f"""
import json, resource, time
from launch.config_loader import load_config
from rollouts.tasks.factory import make_task
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
cfg, _ = load_config(['experiment=arith_tiny', 'task.type=dataset', 'task.path={path}', 'task.rewards=[math_verify]',
                      'model_path={model_path}', 'engine.max_model_len=256'])
import datasets, transformers  # imported before the clock starts: what the data costs, not the libraries
before, start = rss(), time.perf_counter()
task = make_task(cfg, '{model_path}')
sample = task.train[len(task.train) - 1]
print(json.dumps({{"seconds": time.perf_counter() - start, "rss_added_mb": rss() - before,
                  "train_rows": len(task.train), "report": task.report}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"rows": rows, "seconds": round(result["seconds"], 2), "rss_added_mb": round(result["rss_added_mb"]),
            "train_rows": result["train_rows"], "report": result["report"]}


def to_markdown(result: dict) -> str:
    lines = ["# A million-row dataset: time to the first train step and driver memory", ""]
    lines += [f"- {k}: {v}" for k, v in result["setup"].items()]
    lines += ["", "## `areal train` (arith_tiny, 2 steps), each its own process", "",
              "| run | seconds to first train step | driver peak RSS (MB) |", "|---|---|---|"]
    for name, run in result["runs"].items():
        lines.append(f"| {name} | {run['seconds_to_first_step']} | {run['driver_peak_rss_mb']} |")
    base, data = result["runs"]["built-in arithmetic"], result["runs"]["dataset"]
    lines += ["", f"The dataset adds {data['seconds_to_first_step'] - base['seconds_to_first_step']:+.1f} s to the "
                  f"first step and {data['driver_peak_rss_mb'] - base['driver_peak_rss_mb']:+d} MB to the driver's "
                  "peak memory.", "", "## The load alone (read, check every row, length filter)", "",
              "| prompts | rows | seconds | RSS added (MB) |", "|---|---|---|---|"]
    for name, load in result["load_alone"].items():
        lines.append(f"| {name} | {load['rows']:,} | {load['seconds']} | {load['rss_added_mb']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    from launch.train import demo_model

    model = str(demo_model(0))
    with tempfile.TemporaryDirectory(prefix="areal-bench-data-") as tmp:
        tmp = Path(tmp)
        data, chat = tmp / "rows.parquet", tmp / "chat.parquet"
        write_rows(data, args.rows, chat=False)
        arms = {"built-in arithmetic": RUN,
                "dataset": [*RUN, "task.type=dataset", f"task.path={data}", "task.rewards=[math_verify]"]}
        # alternated, twice each, the faster kept: the first process of a benchmark pays cold file caches
        tries: dict[str, list[dict]] = {name: [] for name in arms}
        for attempt in range(2):
            for name, overrides in arms.items():
                tries[name].append(time_to_first_step(overrides, tmp / f"{name.split()[0]}-{attempt}"))
        runs = {name: min(found, key=lambda r: r["seconds_to_first_step"]) | {"tries": found}
                for name, found in tries.items()}
        alone = {"text": load_alone(data, model, args.rows)}
        smollm2 = Path(os.environ.get("AREAL_CACHE", Path.home() / ".cache" / "areal")) / "smollm2-135m-instruct"
        if (smollm2 / "config.json").exists():
            write_rows(chat, args.rows, chat=True)
            alone["chat (SmolLM2 template)"] = load_alone(chat, str(smollm2), args.rows)
    result = {"setup": provenance(f"{args.rows:,}-row parquet, arith_tiny, 2 train steps"), "runs": runs,
              "load_alone": alone}
    write_results("dataset_load", result, to_markdown(result))


if __name__ == "__main__":
    main()
