"""LoRA versions to vLLM as merged weights (the baseline) or as adapters alone: bytes and seconds per sync, and
generation tokens/s on the engine each one needs (a plain one; one with LoRA enabled serving the adapter).

    python bench/lora_sync.py                  # SmolLM2-135M-Instruct, rank 16 on its 7 projections; ~6 min
    python bench/lora_sync.py --model tiny     # the demo's tiny model, a quick check

What a run calls, in one process (the engine core is a second one): the LoRA learner's bucket export
(``LMLearner.weights_manifest``: merged tensors, or the adapters under PEFT's names), ``RolloutWorker.load_weights``
and ``VLLMEngine`` (an in-place reload, or a LoRA request per version). The adapters are random (B is not zero)
so the adapted model differs from the base. The generation workload is the SmolLM2 preset's: arithmetic prompts
in the chat format, 8 samples each, 16 new tokens, temperature 0.7; both engines get the same seeds. Writes
bench/results/lora_sync.{json,md}; "auto" in learner.lora.sync follows what it shows on CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.provenance import provenance, write_results  # noqa: E402

RANK, ALPHA = 16, 32


def model_dir(name: str, tmp: Path) -> Path:
    if name == "tiny":
        from launch.tiny_model import make_random_tiny_model

        return make_random_tiny_model(tmp / "tiny")
    from launch.smollm2 import bootstrap_smollm2

    return bootstrap_smollm2()


def make_learner(path: Path):
    import torch

    from areal.config import AlgoConfig, LearnerConfig, LoraConfig
    from learners.deepspeed_setup import Rendezvous
    from learners.lm_learner import LMLearner

    learner = LMLearner(str(path), LearnerConfig(lora=LoraConfig(rank=RANK, alpha=ALPHA)), AlgoConfig(),
                        rdv=Rendezvous(master_port=29671))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in learner.engine.module.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.01)
    return learner


def export(learner, adapters: bool, root: Path):
    """(manifest, seconds) of one export as a run makes it; the learner exports merged weights or adapters."""
    learner.adapter_sync, learner._payload_names = adapters, None  # what learner.lora.sync picks at start-up
    learner.version += 1
    start = time.perf_counter()
    manifest = learner.weights_manifest(256 * 2**20, root=str(root))
    return manifest, time.perf_counter() - start


def prompts(path: Path, count: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        return [[5 + i, 40 + 3 * i, 60 + i, 70 - i, 9] for i in range(count)]
    return [list(tokenizer.apply_chat_template([{"role": "user", "content": f"What is {i + 3} + {2 * i + 5}? "
                                                 "Answer with the number only."}], add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"])
            for i in range(count)]


async def generate(engine, workload, samples: int, tokens: int) -> tuple[int, float]:
    from rollouts.engines.base import SamplingConfig

    start = time.perf_counter()
    groups = await asyncio.gather(*(engine.generate(p, SamplingConfig(max_new_tokens=tokens, temperature=0.7,
                                                                      seed=i), samples)
                                    for i, p in enumerate(workload)))
    return sum(len(c.token_ids) for g in groups for c in g), time.perf_counter() - start


def bench_path(adapters: bool, learner, path: Path, workload, args, tmp: Path) -> dict:
    from areal.config.engine import EngineConfig
    from rollouts.engines.vllm_engine import VLLMEngine
    from rollouts.worker import RolloutWorker

    async def run() -> dict:
        began = time.perf_counter()
        engine = VLLMEngine(EngineConfig(kv_cache_gb=0.5, max_model_len=256, max_num_seqs=64), str(path),
                            lora_rank=RANK if adapters else 0, max_loras=2)
        started = time.perf_counter() - began
        worker = RolloutWorker(engine, workflow=None, weights_root=tmp / f"rollout-{adapters}")
        syncs, exports, nbytes = [], [], 0
        try:
            await generate(engine, workload[:2], 2, 4)  # warm-up
            for _ in range(args.syncs):
                manifest, seconds = export(learner, adapters, tmp / "exports")
                exports.append(seconds)
                nbytes = manifest.total_bytes
                syncs.append(await worker.load_weights(manifest, manifest.version))
            rates = []
            for _ in range(args.repeats):
                generated, seconds = await generate(engine, workload, args.samples, args.tokens)
                rates.append(generated / seconds)
        finally:
            await engine.close()
        return {"engine_start_s": started, "bytes": nbytes, "export_s": statistics.median(exports),
                "load_s": statistics.median(syncs), "tokens_per_s": statistics.median(rates),
                "tokens_per_s_all": rates}

    return asyncio.run(run())


def to_markdown(result: dict) -> str:
    s = result["setup"]
    lines = [f"# LoRA versions to vLLM: merged weights vs adapters\n",
             f"`{s['command']}` at commit {s['commit']} ({s['time']}, {s['hardware']}); {s['workload']}\n",
             "| sync | bytes per version | export s | engine load s | sync total s | generation tokens/s | "
             "engine start s |", "|---|---|---|---|---|---|---|"]
    for name, e in result["paths"].items():
        lines.append(f"| {name} | {e['bytes'] / 2**20:.1f} MiB | {e['export_s']:.3f} | {e['load_s']:.3f} | "
                     f"{e['export_s'] + e['load_s']:.3f} | {e['tokens_per_s']:.1f} | {e['engine_start_s']:.1f} |")
    r = result["ratios"]
    lines.append(f"\nadapter vs merged: {r['bytes']:.3f}x the bytes, sync {r['sync_speedup']:.1f}x faster, "
                 f"generation at {r['generation']:.2f}x the tokens/s.\n")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2", choices=("smollm2", "tiny"))
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--syncs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="lora_sync", help="results stem under bench/results")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    import torch

    torch.set_num_threads(1)  # the learner's share; the engine core has its own
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="areal-bench-lora-", dir=shm) as tmp:
        path = model_dir(args.model, Path(tmp))
        learner = make_learner(path)
        workload = prompts(path, args.prompts)
        try:
            paths = {name: bench_path(name == "adapter", learner, path, workload, args, Path(tmp))
                     for name in ("merged", "adapter")}
        finally:
            learner.remove_exports()
    merged, adapter = paths["merged"], paths["adapter"]
    ratios = {"bytes": adapter["bytes"] / merged["bytes"],
              "sync_speedup": (merged["export_s"] + merged["load_s"]) / (adapter["export_s"] + adapter["load_s"]),
              "generation": adapter["tokens_per_s"] / merged["tokens_per_s"]}
    workload = (f"{args.model}, LoRA rank {RANK} alpha {ALPHA} on the 7 projections, float32 on CPU; "
                f"{args.syncs} syncs each; generation: {args.prompts} prompts x {args.samples} samples x "
                f"{args.tokens} new tokens at temperature 0.7, median of {args.repeats}")
    result = {"setup": provenance(workload), "paths": paths, "ratios": ratios}
    write_results(args.out, result, to_markdown(result))


if __name__ == "__main__":
    main()
