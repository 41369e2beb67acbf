"""Aggregator cost: time of every registered aggregator as a ratio to `mean`, measured in
the same process on the same tensors, for n workers in {8, 16, 32} and d in {1e5, 1e6, 1e7};
plus Flag's fitted exponent in d (its cost should be linear in d: O(d n^2)).

    python bench/aggregation.py            # full grid, ~5 min on 2 cores
    python bench/aggregation.py --quick    # d up to 1e6

Writes bench/results/aggregation.{json,md}. Ratios, not seconds, are the result: the
machine is shared and noisy, and a ratio to `mean` timed alongside cancels most of it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from areal.aggregation import AGGREGATORS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def byzantine_count(n: int) -> int:
    """The largest f every aggregator accepts (Bulyan needs n >= 4f + 3)."""
    return (n - 3) // 4


def make_grads(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, generator=g) + 0.5 * torch.randn(n, d, generator=g)


def time_call(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def fit_exponent(ds: list[int], ts: list[float]) -> float:
    """Least-squares slope of log t against log d."""
    xs, ys = [math.log(d) for d in ds], [math.log(t) for t in ts]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def setup_block(args) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=RESULTS.parent, timeout=10).stdout.strip()
    except OSError:
        commit = "unknown"
    return {
        "command": "python bench/aggregation.py" + (" --quick" if args.quick else ""),
        "commit": commit,
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "hardware": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "torch": torch.__version__,
        "dtype": "float32",
        "timing": f"best of {args.repeats} calls after one warm-up call "
                  "(Flag builds its seeded start once per (d, m) and caches it, as in training)",
    }


def run(args) -> dict:
    ns = [8, 16, 32]
    ds = [100_000, 1_000_000] + ([] if args.quick else [10_000_000])
    rows = []
    for n in ns:
        f = byzantine_count(n)
        for d in ds:
            grads = make_grads(n, d, seed=n)
            seconds = {}
            for name, fn in AGGREGATORS.items():
                fn(grads, f)  # warm-up: allocator, thread pool, first-call dispatch
                seconds[name] = min(time_call(lambda fn=fn, g=grads, f=f: fn(g, f), args.repeats))
            base = seconds["mean"]
            rows.append({"n": n, "d": d, "f": f, "seconds": seconds,
                         "ratio_to_mean": {k: v / base for k, v in seconds.items()}})
            print(f"n={n:3d} d={d:>10,d} f={f}  mean={base * 1e3:8.2f} ms  "
                  + "  ".join(f"{k}={v / base:7.1f}x" for k, v in seconds.items() if k != "mean"), flush=True)
            del grads
    exponents = {n: fit_exponent([r["d"] for r in rows if r["n"] == n],
                                 [r["seconds"]["flag"] for r in rows if r["n"] == n]) for n in ns}
    return {"setup": setup_block(args), "rows": rows, "flag_exponent_in_d": exponents}


def to_markdown(result: dict) -> str:
    names = [k for k in AGGREGATORS if k != "mean"]
    lines = [
        "# Aggregator cost as a ratio to `mean` (same process, same tensors)",
        "",
        *(f"- {k}: {v}" for k, v in result["setup"].items()),
        "- f (declared Byzantine workers) = (n - 3) // 4, the largest Bulyan accepts",
        "",
        "| n | d | f | mean (ms) | " + " | ".join(names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for r in result["rows"]:
        cells = " | ".join(f"{r['ratio_to_mean'][k]:.1f}x" for k in names)
        lines.append(f"| {r['n']} | {r['d']:.0e} | {r['f']} | {r['seconds']['mean'] * 1e3:.2f} | {cells} |")
    lines += ["", "Flag's fitted exponent of time in d (1.0 = linear):", ""]
    lines += [f"- n = {n}: {e:.2f}" for n, e in result["flag_exponent_in_d"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip d = 1e7")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per cell (best is kept)")
    args = parser.parse_args()
    result = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "aggregation_quick" if args.quick else "aggregation"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = to_markdown(result)
    (RESULTS / f"{stem}.md").write_text(table)
    print()
    print(table)


if __name__ == "__main__":
    main()
