"""What the reasoning-RL loss terms cost a learner step: peak memory and step time, each arm in its own process.

    python bench/loss_terms.py            # CPU, ~10 min on 2 cores

Entropy (tiny-151k shape: a 151,936-token vocabulary on a small decoder, the bench/learner.py CPU shape, packed
path): the step without any entropy computation (the baseline, the learner's entropy function replaced by zeros
in that child), with ``learner/entropy`` measured (the default), and with an entropy bonus (its gradient).
KL (SmolLM2-135M-Instruct, LoRA rank 16 on all projections, ``--lora-sequences`` sequences in micro-batches of
``--lora-mb-tokens``): ``algo.kl_coef`` 0 against 0.1, the reference being
the base with the adapters off (no second model). Each arm: one warm-up step, then ``--steps`` timed steps on the
same batch; peak memory is the child's peak RSS. Writes bench/results/loss_terms.{json,md}.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.learner import PATHS, make_batch  # noqa: E402
from bench.provenance import provenance, write_results  # noqa: E402

ARMS = {
    # name: (model, algo overrides, lora rank, entropy computed)
    "entropy_none": ("tiny-151k", {}, 0, False),
    "entropy_measured": ("tiny-151k", {}, 0, True),
    "entropy_bonus": ("tiny-151k", {"entropy_coef": 0.01}, 0, True),
    "lora_kl_off": ("smollm2", {}, 16, True),
    "lora_kl_on": ("smollm2", {"kl_coef": 0.1}, 16, True),
}


def no_entropy(hidden, head, targets, temperature=1.0, chunk_tokens=1024, entropy_grad=False):
    """The baseline arm: the log-probs alone, and zeros where the entropies would be."""
    from areal.algos import chunked_token_logprobs

    lp = chunked_token_logprobs(hidden, head, targets, temperature, chunk_tokens)
    return lp, lp.detach() * 0


def measure(arm: str, args, port: int) -> dict:
    import torch

    import learners.lm_learner as lm
    from areal.config import AlgoConfig, LearnerConfig, LoraConfig
    from launch.model_shapes import SHAPES, save_random_model
    from launch.smollm2 import bootstrap_smollm2
    from learners.deepspeed_setup import Rendezvous

    model, algo, lora, entropy = ARMS[arm]
    if not entropy:
        lm.chunked_logprobs_entropy = no_entropy
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        if model == "smollm2":
            path = str(bootstrap_smollm2())
        else:
            save_random_model(tmp, SHAPES[model], dtype="float32")
            path = tmp
        path_cfg = {**PATHS["packed"], **({"max_tokens_per_mb": args.lora_mb_tokens} if lora else {})}
        cfg = LearnerConfig(lr=1e-5, minibatches=1, lora=LoraConfig(rank=lora, alpha=lora), **path_cfg)
        learner = lm.LMLearner(path, cfg, AlgoConfig(**algo), rdv=Rendezvous(master_port=port))
        vocab = learner.engine.module.config.vocab_size
        learner.train_step(make_batch(args, vocab, sequences=args.group, seed=99))  # warm-up
        batch = make_batch(args, vocab, sequences=args.lora_sequences if lora else None)
        times, stats = [], {}
        for _ in range(args.steps):
            start = time.perf_counter()
            stats = learner.train_step(batch)
            times.append(time.perf_counter() - start)
    return {"step_seconds": sorted(times)[len(times) // 2], "tokens": int(batch.attention_mask.sum()),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30,
            **{k: stats[k] for k in ("learner/entropy", "learner/kl_ref") if k in stats}}


def child(arm: str, args, port: int, queue) -> None:
    queue.put(measure(arm, args, port))


def run_arm(arm: str, args, port: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=child, args=(arm, args, port, queue))
    proc.start()
    proc.join(args.timeout)
    if proc.is_alive():
        proc.kill()
        return {"error": f"timed out after {args.timeout} s"}
    return queue.get() if not queue.empty() else {"error": f"child exited with code {proc.exitcode}"}


def to_markdown(result: dict) -> str:
    runs = result["runs"]
    lines = ["# Loss terms: what entropy and the reference KL cost a learner step", ""]
    lines += [f"- {key}: {value}" for key, value in result["setup"].items()] + [""]
    lines += ["| arm | step s | peak RSS GiB | learner/entropy | learner/kl_ref |", "|---|---|---|---|---|"]
    for arm, m in runs.items():
        if "error" in m:
            lines.append(f"| {arm} | {m['error']} | | | |")
            continue
        lines.append(f"| {arm} | {m['step_seconds']:.2f} | {m['peak_rss_gib']:.3f} | "
                     f"{m.get('learner/entropy', float('nan')):.3f} | {m.get('learner/kl_ref', float('nan')):.4f} |")
    ratios = result["ratios"]
    lines += ["", *[f"- {name}: {value:+.1%}" for name, value in ratios.items()]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--median", type=int, default=512)
    parser.add_argument("--sigma", type=float, default=0.7)
    parser.add_argument("--cap", type=int, default=1536)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=1200)
    parser.add_argument("--lora-sequences", type=int, default=8, help="SmolLM2's batch (16 x 768 tokens: OOM here)")
    parser.add_argument("--lora-mb-tokens", type=int, default=2048, help="SmolLM2's micro-batch token budget")
    args = parser.parse_args()
    runs = {arm: run_arm(arm, args, 29700 + i) for i, arm in enumerate(args.arms.split(","))}
    for arm, m in runs.items():
        print(arm, m, flush=True)

    def growth(arm: str, base: str, key: str) -> float:
        return runs[arm][key] / runs[base][key] - 1 if "error" not in runs[arm] and "error" not in runs[base] \
            else float("nan")

    ratios = {}
    if {"entropy_none", "entropy_measured", "entropy_bonus"} <= runs.keys():
        ratios["peak memory, entropy measured vs none"] = growth("entropy_measured", "entropy_none", "peak_rss_gib")
        ratios["peak memory, entropy bonus vs none"] = growth("entropy_bonus", "entropy_none", "peak_rss_gib")
        ratios["step time, entropy measured vs none"] = growth("entropy_measured", "entropy_none", "step_seconds")
    if {"lora_kl_off", "lora_kl_on"} <= runs.keys():
        ratios["peak memory, LoRA kl_coef 0.1 vs 0"] = growth("lora_kl_on", "lora_kl_off", "peak_rss_gib")
        ratios["step time, LoRA kl_coef 0.1 vs 0"] = growth("lora_kl_on", "lora_kl_off", "step_seconds")
    setup = provenance(f"{args.sequences} sequences, {args.prompt}-token prompts, lognormal responses (median "
                       f"{args.median}), packed micro-batches, {args.steps} timed steps per arm")
    result = {"setup": setup, "runs": runs, "ratios": ratios}
    write_results("loss_terms", result, to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
