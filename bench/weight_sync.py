"""Weight sync: seconds from "the learner holds version v" to "the engine serves v", and the memory it takes, for
the files transport (the earlier path, the baseline) and the buckets transport, at 12 MB, 500 MB and 1 GB.

    python bench/weight_sync.py                        # ~5 min on 2 cores
    python bench/weight_sync.py --sizes 12mb --repeats 2

One process plays the learner and the rollout actor around a real VLLMEngine (whose engine core is a second
process), calling the code a run calls: the learner's export (``full_state_dict`` + ``safetensors_payload``;
``BucketExporter`` over ``partial_state_dict``), Ray's object store (put by the learner actor's return, got as
the rollout actor's argument; a pinned read task for buckets from another node), ``RolloutWorker.load_weights``
and ``VLLMEngine.update_weights``. Left out: the actors' call overhead (~1 ms) and ZeRO-3 gathering (the CPU
learner runs ZeRO-0). Models are Qwen2 shapes built from config with random weights, float32 (what CPU engines
run): the tiny demo model (12 MB), and the 0.5B's layers with fewer of them (500 MB: 6 layers and a 40k vocab;
1 GB: 8 layers and its 152k vocab). After the first sync of each path the engine's log-probs of a greedy token
are checked against the learner's model, and its version tag against v.

Memory: a sampler thread reads, every 5 ms, the private (anonymous) RSS of this process and of the engine core,
and the bytes of the RAM files involved (the learner's exported buckets, the rollout worker's staging). Private
memory is reported as its peak above the value just before the sync, over the export phase (learner side) and
the load phase (rollout actor and engine side); RAM files at their peak and as held after the sync. Ray's object
store holds the payload object (files) or one bucket per fetch (buckets from another node) by construction; it
is not sampled. Writes bench/results/weight_sync.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.provenance import provenance, write_results  # noqa: E402

PATHS = ("files", "buckets", "buckets_remote")
PATH_NOTES = {"files": "files (baseline): one serialised object, staged by the rollout actor, reloaded from it",
              "buckets": "buckets, engine on the learner's node: read in place from the learner's RAM files",
              "buckets_remote": "buckets, engine on another node: one bucket at a time via a pinned Ray task "
                                "and the object store, staged, read, deleted"}
MIB = 2**20


def make_model(size: str, root: Path) -> Path:
    """A float32 Qwen2 model folder of about ``size`` with the char tokenizer (the engine needs one)."""
    from launch.model_shapes import ModelShape, save_random_model
    from launch.tiny_model import build_char_tokenizer, make_random_tiny_model

    if size == "12mb":
        return make_random_tiny_model(root / size)
    shape = {"500mb": ModelShape(896, 4864, 6, 14, 2, vocab_size=40_000),
             "1gb": ModelShape(896, 4864, 8, 14, 2)}[size]
    path = save_random_model(root / size, shape)
    build_char_tokenizer().save_pretrained(path)
    return path


class MemorySampler:
    """Peaks of private RSS per process and of RAM-file bytes per directory, per phase, every ``period`` s."""

    def __init__(self, pids: dict[str, int], dirs: list[Path], period: float = 0.005):
        self.pids, self.dirs, self.period = pids, dirs, period
        self.phase, self.peaks, self.base = "idle", {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def read(self) -> dict[str, int]:
        out = {}
        for name, pid in self.pids.items():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                out[f"{name}_anon"] = int(status.split("RssAnon:")[1].split()[0]) * 1024
            except (OSError, IndexError):
                out[f"{name}_anon"] = 0
        out["ram_files"] = 0
        for path in self.dirs:
            for dirpath, _, files in os.walk(path):
                for f in files:
                    try:
                        out["ram_files"] += os.stat(os.path.join(dirpath, f)).st_size
                    except OSError:
                        pass  # deleted between the listing and the stat
        return out

    def _run(self):
        while not self._stop.wait(self.period):
            phase = self.phase
            for key, value in self.read().items():
                self.peaks[(phase, key)] = max(self.peaks.get((phase, key), 0), value)

    def start(self):
        self.base, self.peaks = self.read(), {}

    def memory(self) -> dict[str, float]:
        """MiB: private memory above its pre-sync value, peak per side (learner: export phase; rollout actor and
        engine: load phase); RAM files (learner's export + staging) at their peak and as held after the sync."""
        def extra(phase, key):
            return max(0, self.peaks.get((phase, key), 0) - self.base.get(key, 0)) / MIB

        peak_files = max(self.peaks.get((phase, "ram_files"), 0) for phase in ("export", "load"))
        return {"learner_anon_mib": extra("export", "driver_anon"), "actor_anon_mib": extra("load", "driver_anon"),
                "engine_anon_mib": extra("load", "engine_anon"), "ram_files_peak_mib": peak_files / MIB,
                "ram_files_held_mib": self.read()["ram_files"] / MIB}

    def close(self):
        self._stop.set()
        self._thread.join()


def engine_core_pid() -> int:
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            if "EngineCore" in child.name() or any("EngineCore" in part for part in child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    raise RuntimeError("no EngineCore child process found")


class Bench:
    """One model size: the learner's model, the engine, the rollout worker and the export machinery."""

    def __init__(self, model_dir: Path, staging: Path, bucket_mb: int):
        import torch
        from transformers import AutoModelForCausalLM

        from areal.config.engine import EngineConfig
        from learners.deepspeed_setup import state_sizes
        from learners.lm_learner import untied_names
        from learners.weight_export import BucketExporter
        from rollouts.engines.vllm_engine import VLLMEngine
        from rollouts.worker import RolloutWorker

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.holder = SimpleNamespace(module=self.model)  # what the DeepSpeed helpers read: engine.module
        self.names = untied_names(self.model)
        all_sizes = state_sizes(self.holder, 0)
        self.sizes = [(n, all_sizes[n]) for n in self.names]
        self.config_files = {n: (model_dir / n).read_bytes() for n in ("config.json", "generation_config.json")
                             if (model_dir / n).exists()}
        self.exporter = BucketExporter(bucket_mb * MIB)
        self.loop = asyncio.new_event_loop()
        cfg = EngineConfig(kv_cache_gb=0.25, max_model_len=64, max_num_seqs=4)
        started = time.perf_counter()
        self.engine = self.loop.run_until_complete(self._start(cfg, model_dir))
        self.loop.run_until_complete(self.engine.generate([5, 6, 7], self.greedy()))
        self.engine_start_seconds = time.perf_counter() - started
        self.worker = RolloutWorker(self.engine, None, staging)
        self.sampler = MemorySampler({"driver": os.getpid(), "engine": engine_core_pid()},
                                     [self.exporter.dir.path, staging])

    @staticmethod
    async def _start(cfg, model_dir):
        from rollouts.engines.vllm_engine import VLLMEngine

        return VLLMEngine(cfg, str(model_dir))

    @staticmethod
    def greedy():
        from rollouts.engines.base import SamplingConfig

        return SamplingConfig(max_new_tokens=1, temperature=0.0)

    async def sync_files(self, version: int) -> dict[str, float]:
        import ray

        from learners.deepspeed_setup import full_state_dict
        from learners.lm_learner import safetensors_payload

        t0 = time.perf_counter()
        self.sampler.phase = "export"
        state = full_state_dict(self.holder, 0)  # the learner's gathered_state()
        cloned = time.perf_counter()
        files = safetensors_payload(state, self.names, self.config_files)
        payload = sum(len(b) for b in files.values())
        del state
        t1 = time.perf_counter()
        ref = ray.put(files)  # the learner actor's return value
        del files
        t2 = time.perf_counter()
        self.sampler.phase = "load"
        got = ray.get(ref)  # the rollout actor's argument
        t3 = time.perf_counter()
        await self.worker.load_weights(got, version)
        del got, ref
        end = time.perf_counter()
        update = self.engine.last_update
        return {"seconds": end - t0, "export": t1 - t0, "export_clone": cloned - t0, "export_serialise": t1 - cloned,
                "object_put": t2 - t1, "object_get": t3 - t2,
                "stage_write": end - t3 - update["seconds"], **self.engine_parts(),
                # the driver keeps the payload object (workers that join load it) until the next version
                "object_store_peak_mib": payload / MIB, "object_store_held_mib": payload / MIB}

    async def sync_buckets(self, version: int, remote: bool) -> dict[str, float]:
        from learners.deepspeed_setup import partial_state_dict

        t0 = time.perf_counter()
        self.sampler.phase = "export"
        manifest = self.exporter.export(version, self.sizes, lambda names: partial_state_dict(self.holder, 0, names))
        t1 = time.perf_counter()
        self.sampler.phase = "load"
        await self.worker.load_weights(manifest, version, self.remote_fetch(manifest) if remote else None, 300.0)
        end = time.perf_counter()
        largest = max(b.nbytes for b in manifest.buckets)
        return {"seconds": end - t0, "export": t1 - t0, "buckets": len(manifest.buckets), **self.engine_parts(),
                # another node: the bucket fetched last, until it is staged
                "object_store_peak_mib": largest / MIB if remote else 0.0, "object_store_held_mib": 0.0}

    @staticmethod
    def remote_fetch(manifest):
        """What ``actors.weight_fetch.bucket_fetcher`` does for another node, without the node pinning (one node)."""
        from actors.weight_fetch import read_bucket_file

        paths = manifest.paths()

        async def fetch(index):
            return await read_bucket_file.remote(paths[index])

        return fetch

    def engine_parts(self) -> dict[str, float]:
        u = self.engine.last_update
        return {"engine_update": u["seconds"], "engine_reload": u["reload_seconds"],
                "engine_repack": u["repack_seconds"], "engine_pause": u["pause_seconds"]}

    def perturb(self, seed: int) -> None:
        """A new version: every weight moved a little (outside the timed part)."""
        import torch

        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 1e-2 * p.std().clamp_min(1e-3))

    def check_serves(self, version: int) -> float:
        """|engine - learner| log-prob of the greedy next token; the engine must tag it with ``version``."""
        import torch

        prompt = [5, 40, 60, 33, 9]
        (c,) = self.loop.run_until_complete(self.engine.generate(prompt, self.greedy()))
        if set(c.versions) != {version}:
            raise AssertionError(f"engine tagged {c.versions}, expected version {version}")
        with torch.no_grad():
            logits = self.model(torch.tensor([prompt])).logits[0, -1].float()
        reference = torch.log_softmax(logits, -1)[c.token_ids[0]].item()
        return abs(c.logprobs[0] - reference)

    def run(self, path: str, version: int) -> dict[str, float]:
        self.sampler.start()
        if path == "files":
            metrics = self.loop.run_until_complete(self.sync_files(version))
        else:
            metrics = self.loop.run_until_complete(self.sync_buckets(version, remote=path == "buckets_remote"))
        self.sampler.phase = "idle"
        time.sleep(0.02)
        return {**metrics, **self.sampler.memory()}

    def close(self):
        self.sampler.close()
        self.loop.run_until_complete(self.engine.close())
        self.exporter.remove()


def summarise(runs: list[dict]) -> dict:
    """Median, min and max of every number over the repeats."""
    out = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def bench_size(size: str, args, root: Path) -> dict:
    model_dir = make_model(size, root / "models")
    bench = Bench(model_dir, root / "staging", args.bucket_mb)
    gb = sum(n for _, n in bench.sizes) / 1e9
    print(f"{size}: {gb:.3f} GB of weights, engine up in {bench.engine_start_seconds:.0f} s", flush=True)
    result = {"size": size, "weights_gb": gb, "tensors": len(bench.sizes), "paths": {}}
    version = 0
    repeats = args.repeats if gb > 0.1 else max(args.repeats, 5)  # small syncs are short and noisy: more of them
    try:
        for path in args.paths.split(","):
            # what the previous path left staged (the files transport keeps the version it loaded) is not this one's
            for leftover in (root / "staging").iterdir():
                shutil.rmtree(leftover, ignore_errors=True)
            runs = []
            for repeat in range(repeats):
                version += 1
                if repeat == 0:
                    bench.perturb(version)
                runs.append(bench.run(path, version))
                print(f"  {path} v{version}: {runs[-1]['seconds']:.2f} s", flush=True)
                if repeat == 0:
                    runs[-1]["logprob_error"] = bench.check_serves(version)
            error = runs[0].pop("logprob_error")
            result["paths"][path] = {"summary": summarise(runs), "logprob_error": error, "runs": runs}
    finally:
        bench.close()
    base = result["paths"].get("files")
    for path, entry in result["paths"].items():
        if base:
            entry["speedup_vs_files"] = base["summary"]["seconds"]["median"] / entry["summary"]["seconds"]["median"]
        entry["seconds_per_gb"] = entry["summary"]["seconds"]["median"] / gb
    return result


def to_markdown(result: dict) -> str:
    lines = ["# Weight sync: learner has version v -> engine serves v", ""]
    lines += [f"- {key}: {value}" for key, value in result["setup"].items()] + [""]
    lines += [f"- {path}: {note}" for path, note in PATH_NOTES.items()] + [""]
    lines += ["One process plays the learner and the rollout actor, calling the code a run calls (export, Ray object "
              "store, staging, RolloutWorker.load_weights), around a real VLLMEngine whose engine core is a second "
              "process; the actors' own call overhead (~1 ms) is left out. The engine's private peak is vLLM's "
              "layerwise reload re-packing its largest layer (the embedding, tied to the LM head), the same in every "
              "transport.", ""]
    lines += ["Seconds: medians over the repeats [min-max]. Memory in MiB (medians): private RSS above its value "
              "before the sync at its peak, on the learner side (export), in the rollout actor and in the engine core "
              "(load); RAM files (the learner's exported buckets and the rollout worker's staging) at their peak and as held "
              "after the sync; the Ray object store by construction (peak / held until the next version).", ""]
    lines += ["| size | path | seconds | s/GB | vs files | export (clone + serialise) | object put / get | stage write | "
              "engine reload + repack | learner / actor / engine private | RAM files peak / held | object store peak / held | "
              "logprob err |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for size in result["sizes"]:
        for path, e in size["paths"].items():
            s = {k: v["median"] for k, v in e["summary"].items()}
            secs = e["summary"]["seconds"]
            objects = f"{s['object_put']:.2f} / {s['object_get']:.2f}" if "object_put" in s else "-"
            export = (f"{s['export']:.2f} ({s['export_clone']:.2f} + {s['export_serialise']:.2f})"
                      if "export_clone" in s else f"{s['export']:.2f}")
            stage = f"{s['stage_write']:.2f}" if "stage_write" in s else "-"
            lines.append(
                f"| {size['size']} ({size['weights_gb']:.2f} GB) | {path} | {secs['median']:.2f} "
                f"[{secs['min']:.2f}-{secs['max']:.2f}] | {e['seconds_per_gb']:.2f} | "
                f"{e.get('speedup_vs_files', 1.0):.1f}x | {export} | {objects} | {stage} | "
                f"{s['engine_reload']:.2f} + {s['engine_repack']:.2f} | {s['learner_anon_mib']:.0f} / "
                f"{s['actor_anon_mib']:.0f} / {s['engine_anon_mib']:.0f} | {s['ram_files_peak_mib']:.0f} / "
                f"{s['ram_files_held_mib']:.0f} | {s['object_store_peak_mib']:.0f} / "
                f"{s['object_store_held_mib']:.0f} | {e['logprob_error']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="12mb,500mb,1gb")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bucket-mb", type=int, default=256, help="rollout.weight_bucket_mb")
    parser.add_argument("--out", default="weight_sync", help="results stem under bench/results")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    import ray
    import torch

    torch.set_num_threads(1)  # the learner's share; the engine core has its own
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=3 * 2**30)
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    sizes = []
    try:
        with tempfile.TemporaryDirectory(prefix="areal-bench-ws-", dir=shm) as tmp:
            for size in args.sizes.split(","):
                sizes.append(bench_size(size, args, Path(tmp)))
    finally:
        ray.shutdown()
    workload = (f"sizes {args.sizes}; paths {args.paths}; {args.repeats} syncs each (at least 5 below 100 MB), every "
                f"weight moved before the first; rollout.weight_bucket_mb={args.bucket_mb}; float32 Qwen2 shapes, "
                "random init")
    result = {"setup": provenance(workload), "sizes": sizes}
    write_results(args.out, result, to_markdown(result))


if __name__ == "__main__":
    main()
