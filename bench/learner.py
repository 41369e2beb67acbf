"""Learner step at real model sizes: packed token-budget micro-batches with chunked log-probs, against the
padded full-logits path (the learner before them), on the same batch.

    python bench/learner.py                                  # CPU: the tiny-151k shape, ~10 min on 2 cores
    python bench/learner.py --shapes qwen2.5-0.5b,qwen2.5-1.5b --steps 3    # a GPU machine

Shapes are built from config with random weights (launch/model_shapes.py). The batch: 64
sequences, a 256-token prompt and a lognormal response (median 512, sigma 0.7, at most
1,536), GRPO groups of 8. Each (shape, path) runs in a child process, so its peak memory is
its own: CUDA max allocated on a GPU, the child's peak RSS on a CPU. A path whose logits
alone cannot fit in this machine's memory is reported as such rather than run.
Writes bench/results/learner.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.provenance import provenance, write_results  # noqa: E402

# bf16 dense matmul peaks: the H100/H200 data sheet, and what a bf16 GEMM reached on the lent H200
ROOFS = {"spec_989": 989e12, "measured_790": 790e12}
PATHS = {
    "packed": {"packing": True, "logprob_chunk_tokens": 1024, "max_tokens_per_mb": 16384},
    "packed_checkpointed": {"packing": True, "logprob_chunk_tokens": 1024, "max_tokens_per_mb": 16384,
                            "gradient_checkpointing": True},
    "padded_full_logits": {"packing": False, "logprob_chunk_tokens": 0, "max_tokens_per_mb": 10**9},
}


def response_lengths(n: int, median: int, sigma: float, cap: int, seed: int) -> list[int]:
    """Lognormal response lengths (at least 1, at most ``cap``)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    draws = torch.exp(math.log(median) + sigma * torch.randn(n, generator=gen, dtype=torch.float64))
    return [int(min(cap, max(1, round(x)))) for x in draws.tolist()]


def make_batch(args, vocab: int, sequences: int | None = None, seed: int = 0):
    """The benchmark's TrainBatch: random tokens, behaviour log-probs of a uniform policy, 0/1 rewards."""
    import torch

    from areal.batching import build_train_batch
    from areal.types import Trajectory, TrajectoryGroup

    n = sequences or args.sequences
    gen = torch.Generator().manual_seed(seed)
    lengths = response_lengths(n, args.median, args.sigma, args.cap, seed)
    uniform = -math.log(vocab)

    def sample(i: int) -> Trajectory:
        ids = torch.randint(0, vocab, (args.prompt + lengths[i],), generator=gen).tolist()
        out = ids[args.prompt:]
        return Trajectory(tuple(ids[:args.prompt]), tuple(out), (uniform,) * len(out), (0,) * len(out),
                          float(i % 2))

    group = min(args.group, n)
    groups = [TrajectoryGroup(str(g), tuple(sample(g * group + i) for i in range(group)), 0)
              for g in range(n // group)]
    return build_train_batch(groups, "grpo", pad_id=0)


def logits_bytes(batch, vocab: int) -> int:
    """What the padded path's float32 logits of the whole batch take (one copy)."""
    return batch.input_ids.numel() * vocab * 4


def available_memory_bytes() -> int:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info.get("MemAvailable", info["MemTotal"])


def measure(shape_name: str, path_name: str, args, port: int) -> dict:
    """Runs in a child process: build the model, one warm-up step, then ``args.steps`` timed steps."""
    import resource
    import time

    import torch

    from areal.config import AlgoConfig, LearnerConfig
    from launch.model_shapes import SHAPES, save_random_model
    from learners.deepspeed_setup import Rendezvous
    from learners.lm_learner import LMLearner

    shape = SHAPES[shape_name]
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        save_random_model(tmp, shape, dtype="bfloat16" if cuda else "float32")
        cfg = LearnerConfig(lr=1e-6, minibatches=args.minibatches, **PATHS[path_name])
        learner = LMLearner(tmp, cfg, AlgoConfig(), rdv=Rendezvous(master_port=port))
    learner.train_step(make_batch(args, shape.vocab_size, sequences=args.group, seed=99))  # warm-up
    batch = make_batch(args, shape.vocab_size)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, stats = [], {}
    for _ in range(args.steps):
        start = time.perf_counter()
        stats = learner.train_step(batch)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step = sorted(times)[len(times) // 2]
    lengths = batch.attention_mask.sum(dim=1).tolist()
    flops = sum(length * shape.train_flops_per_token(length) * 4 / 3 for length in lengths)  # + proximal forward
    out = {
        "step_seconds": step,
        "tokens": int(sum(lengths)),
        "tokens_per_s": sum(lengths) / step,
        "batch_padding_fraction": 1 - sum(lengths) / batch.input_ids.numel(),
        "forward_padding_fraction": stats["learner/padding_fraction"],
        "micro_batches": stats["learner/micro_batches"],
        "proximal_seconds": stats["learner/proximal_seconds"],
        "model_tflops_per_step": flops / 1e12,
    }
    if cuda:
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["device"] = torch.cuda.get_device_name()
        for key, roof in ROOFS.items():
            out[f"fraction_of_{key}"] = flops / step / roof
    else:
        out["peak_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
        out["device"] = "cpu (peak RSS of the whole child process)"
    return out


def child(shape_name: str, path_name: str, args, port: int, queue) -> None:
    try:
        queue.put(measure(shape_name, path_name, args, port))
    except Exception as exc:  # an out-of-memory path is a result, not a crash of the benchmark
        oom = "out of memory" in str(exc).lower() or isinstance(exc, MemoryError)
        queue.put({"error": ("out of memory: " if oom else "") + f"{type(exc).__name__}: {str(exc)[:300]}",
                   "traceback": traceback.format_exc()[-2000:]})


def run_path(shape_name: str, path_name: str, args, port: int) -> dict:
    import torch

    from launch.model_shapes import SHAPES

    vocab = SHAPES[shape_name].vocab_size
    need = logits_bytes(make_batch(args, vocab), vocab)
    if path_name == "padded_full_logits" and not torch.cuda.is_available() and need > available_memory_bytes():
        return {"error": f"does not fit: the batch's float32 logits alone are {need / 2**30:.1f} GiB, this machine "
                         f"has {available_memory_bytes() / 2**30:.1f} GiB available"}
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=child, args=(shape_name, path_name, args, port, queue))
    proc.start()
    proc.join(args.timeout)
    if proc.is_alive():
        proc.kill()
        return {"error": f"timed out after {args.timeout} s"}
    if queue.empty():
        return {"error": f"child exited with code {proc.exitcode} (killed for memory?)"}
    return queue.get()


def to_markdown(result: dict) -> str:
    setup = result["setup"]
    lines = [f"# Learner step: packed micro-batches + chunked log-probs vs padded full logits", ""]
    lines += [f"- {key}: {value}" for key, value in setup.items()] + [""]
    lines += ["| shape | path | step s | non-pad tokens/s | batch padding | forward padding | forwards | "
              "peak memory GiB | of 989 TF | of 790 TF |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["runs"]:
        m = row["metrics"]
        if "error" in m:
            lines.append(f"| {row['shape']} | {row['path']} | {m['error']} |||||||| ")
            continue
        frac = [f"{m[k]:.1%}" if k in m else "-" for k in ("fraction_of_spec_989", "fraction_of_measured_790")]
        lines.append(f"| {row['shape']} | {row['path']} | {m['step_seconds']:.2f} | {m['tokens_per_s']:,.0f} | "
                     f"{m['batch_padding_fraction']:.1%} | {m['forward_padding_fraction']:.1%} | "
                     f"{m['micro_batches']:.0f} | {m['peak_memory_gib']:.2f} | {frac[0]} | {frac[1]} |")
    lines += ["", "Model FLOPs: 6 x matmul parameters + causal attention per token for training, plus a third of "
              "that for the proximal forward; the LM head counted on every token."]
    return "\n".join(lines) + "\n"


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--shapes", default="qwen2.5-0.5b,qwen2.5-1.5b" if cuda else "tiny-151k")
    parser.add_argument("--paths", default="packed,padded_full_logits" if not cuda else
                        "packed,packed_checkpointed,padded_full_logits")
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--median", type=int, default=512)
    parser.add_argument("--sigma", type=float, default=0.7)
    parser.add_argument("--cap", type=int, default=1536)
    parser.add_argument("--minibatches", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3 if cuda else 1)
    parser.add_argument("--timeout", type=int, default=3600)
    parser.add_argument("--out", default="learner", help="results stem under bench/results")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    runs = []
    for i, shape in enumerate(args.shapes.split(",")):
        for j, path in enumerate(args.paths.split(",")):
            metrics = run_path(shape, path, args, 29950 + 10 * i + j)
            runs.append({"shape": shape, "path": path, "options": PATHS[path], "metrics": metrics})
            print(shape, path, {k: v for k, v in metrics.items() if k != "traceback"}, flush=True)
    workload = (f"{args.sequences} sequences: prompt {args.prompt} + lognormal response (median {args.median}, "
                f"sigma {args.sigma}, cap {args.cap}), groups of {args.group}, {args.minibatches} minibatches, "
                f"{args.steps} timed step(s) after a warm-up")
    hardware = torch.cuda.get_device_name() if cuda else "CPU only"
    write_results(args.out, {"setup": provenance(workload, hardware), "runs": runs},
                  to_markdown({"setup": provenance(workload, hardware), "runs": runs}))


if __name__ == "__main__":
    main()
