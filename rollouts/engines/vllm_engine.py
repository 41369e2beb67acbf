"""vLLM backend: continuous batching on ``AsyncLLM`` with interruptible, in-place weight updates.

Version tagging relies on vLLM's own weight-version labels (vLLM >= 0.32): the engine core
stamps every batch of sampled tokens with the label current when that step ran, and the
label only changes while generation is paused. Because the stamp travels with the tokens,
it stays exact even though ``pause_generation`` can return before the client-side output
handler has delivered the last pre-pause tokens to their requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import time
import uuid
from pathlib import Path

import torch

from areal.config.engine import EngineConfig
from rollouts.engines.base import BucketFeed, Completion, Engine, LoraAdapter, SamplingConfig
from rollouts.engines.lora_versions import AdapterVersions, LoadedAdapter
from rollouts.engines.vllm_worker_ext import TiedHeadReloadExtension

# vLLM labels outputs with this until the first ``update_weight_version``; our engine starts at 0.
_VLLM_INITIAL_LABEL = "default"
_INITIAL_VERSION = 0
_GIB = 1 << 30
CPU_SHUTDOWN_GRACE_S = 1.0  # between SIGTERM and SIGKILL of a CPU engine core (see close)
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank values


def _prepare_environment() -> bool:
    """Set the CPU build's variables before vllm is first imported; returns whether CUDA is used."""
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
        # With this unset, the CPU build runs the model in a third process (its "mp" executor) beside the
        # client and the engine core, each importing vLLM: 30 s to start here instead of 15 s, for the same
        # tokens/s. AsyncLLM keeps its engine-core process either way; only the executor changes.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # Models are local folders; never wait on an unreachable hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return on_gpu


def _label_to_version(label: str) -> int:
    """Map vLLM's string weight label back to our integer version."""
    return _INITIAL_VERSION if label == _VLLM_INITIAL_LABEL else int(label)


def _per_token_versions(spans, num_tokens: int) -> tuple[int, ...]:
    """Expand vLLM's ``[start, end)`` weight-version spans into one version per token."""
    versions: list[int] = []
    for span in spans or ():
        if span.start != len(versions):
            raise RuntimeError(f"vLLM weight-version spans are not contiguous: {spans}")
        versions.extend([_label_to_version(span.version)] * (min(span.end, num_tokens) - span.start))
    if len(versions) != num_tokens:
        raise RuntimeError(f"vLLM weight-version spans {spans} do not cover {num_tokens} tokens")
    return tuple(versions)


def _to_completion(output, version: int | None = None) -> Completion:
    """Convert one finished vLLM ``CompletionOutput`` into a ``Completion``; ``version``: every token's version
    (a LoRA request's adapter), instead of vLLM's weight-version spans."""
    token_ids = tuple(output.token_ids)
    # logprobs=0 asks for the sampled token only; each position maps token id -> Logprob.
    logprobs = tuple(float(position[tok].logprob) for position, tok in zip(output.logprobs, token_ids))
    return Completion(
        token_ids=token_ids,
        logprobs=logprobs,
        versions=((version,) * len(token_ids) if version is not None
                  else _per_token_versions(output.weight_versions, len(token_ids))),
        text=output.text,
        finish_reason=str(output.finish_reason),
    )


class VLLMEngine(Engine):
    """An ``AsyncLLM`` over a local HF model; weights reload in place from safetensors folders or buckets."""

    def __init__(self, cfg: EngineConfig, model_path: str, seed_offset: int = 0, native_backend: str = "",
                 lora_rank: int = 0, max_loras: int = 2):
        """``native_backend``: "nccl" or "ipc" to receive weights through vLLM's native transfer (GPU only).
        ``lora_rank`` > 0: versions arrive as LoRA adapters of that rank (``LoraAdapter``), served as LoRA requests
        on ``model_path``, which never changes; ``max_loras``: adapters a batch may mix (one per version in flight)."""
        on_gpu = _prepare_environment()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
        kwargs = dict(
            model=str(model_path),
            dtype=dtype,
            max_model_len=cfg.max_model_len,
            max_num_seqs=cfg.max_num_seqs,
            enforce_eager=cfg.enforce_eager,
            seed=cfg.seed + seed_offset,
            # Logprobs of the distribution each token was drawn from: log_softmax(logits / T), what
            # the learner recomputes ("raw" would ignore T). With top_p < 1 they are renormalised
            # over the nucleus; at temperature 0 they are log_softmax(logits).
            logprobs_mode="processed_logprobs",
            disable_log_stats=True,
            use_tqdm_on_load=False,  # a progress bar per weight load, i.e. per policy version
            worker_extension_cls=f"{TiedHeadReloadExtension.__module__}.{TiedHeadReloadExtension.__qualname__}",
        )
        if on_gpu:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        if lora_rank:
            rank = next((r for r in _VLLM_LORA_RANKS if r >= lora_rank), None)
            if rank is None:
                raise ValueError(f"config error: learner.lora.rank = {lora_rank}; vLLM serves LoRA ranks up to "
                                 f"{_VLLM_LORA_RANKS[-1]}: use a smaller rank or learner.lora.sync=merged")
            kwargs.update(enable_lora=True, max_lora_rank=rank, max_loras=max_loras, max_cpu_loras=max_loras)
        if native_backend:
            kwargs["weight_transfer_config"] = {"backend": native_backend}
        else:
            kwargs["distributed_executor_backend"] = "uni"  # the model in the engine-core process (see above)
            # After a weight update (clear_cache) every request in flight recomputes its KV cache. A recompute
            # split across steps (chunked prefill) discards the tokens sampled on its partial steps, and vLLM
            # winds back a seeded request's generator to do so, which the CPU's generators cannot: the engine
            # core dies ("CPU Generator does not use offset"; seen with 64 sequences of ~50 tokens in flight).
            # A step budget that holds every sequence whole never splits one.
            kwargs["max_num_batched_tokens"] = max(2048, cfg.max_num_seqs * cfg.max_model_len)
        if not on_gpu and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            # Equivalent to VLLM_CPU_KVCACHE_SPACE, which only takes whole GiB (and, if the
            # user set it, overrides this); bytes let tests use a fraction of a GiB.
            kwargs["kv_cache_memory_bytes"] = int(cfg.kv_cache_gb * _GIB)
        self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        self._clear_kv_on_update = cfg.kv_on_update == "recompute"
        self._version = _INITIAL_VERSION
        self._model_path, self._tokenizer = str(model_path), None  # decodes completions (loaded on first use)
        self._update_lock = asyncio.Lock()  # binds to the running loop on first use
        self.last_update: dict[str, float] = {}  # where the last update's time went (reload, tied-head re-pack)
        self.native_backend = native_backend
        self._native_started = 0.0  # when the native update in progress paused generation (0: none)
        self._adapters = AdapterVersions(_INITIAL_VERSION) if lora_rank else None
        self._adapter_ids = 0  # vLLM's LoRA ids: unique per load, even if a version is published again
        self._retiring: set[asyncio.Task] = set()

    def _live(self):
        """The AsyncLLM, or an error once the engine is closed."""
        if self._llm is None:
            raise RuntimeError("VLLMEngine is closed")
        return self._llm

    @property
    def version(self) -> int:
        """Version of the weights currently loaded (with adapters: the adapter new requests get)."""
        return self._adapters.version if self._adapters else self._version

    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig, n: int = 1) -> list[Completion]:
        """n independent samples of one prompt, each token tagged with the weights that produced it."""
        from vllm import SamplingParams
        from vllm.inputs import tokens_input
        from vllm.sampling_params import RequestOutputKind

        if n < 1:
            raise ValueError(f"generate: n = {n}; expected an int >= 1")
        params = SamplingParams(
            n=n,
            # a forced length runs past EOS (vLLM's min_tokens would instead ban EOS, so the model writes
            # something else where its answer ends, and an exact-answer reward scores 0 for every sample)
            max_tokens=sampling.forced_new_tokens or sampling.max_new_tokens,
            ignore_eos=sampling.forced_new_tokens > 0,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop=list(sampling.stop) or None,
            # a multi-turn environment reads the turn as written, its tool call's closing stop string included
            include_stop_str_in_output=bool(sampling.stop),
            seed=sampling.seed,
            logprobs=0,
            # vLLM's client detokenizes incrementally at every step, and spells out each sampled token's text
            # for its logprob: CPU the engine and the learner need on a small machine. Texts are decoded once
            # per completion below instead; only stop strings need the incremental detokenizer.
            detokenize=bool(sampling.stop),
            # One message per request: weight-version spans only come with the final output.
            output_kind=RequestOutputKind.FINAL_ONLY,
            # built for this call and never reused: vLLM's defensive deep copy of it was a sixth of the
            # rollout actor's CPU on the demo (a shallow copy is what it keeps per request anyway)
            skip_clone=True,
        )
        final = None
        # An already-rendered token input: no tokenizer pass (raw prompts are deprecated in 0.32).
        prompt = tokens_input(list(prompt_ids))
        version, adapter = self._adapters.acquire() if self._adapters else (None, None)
        try:
            async for out in self._live().generate(prompt, params, request_id=uuid.uuid4().hex, lora_request=adapter):
                final = out
        finally:
            if self._adapters and self._adapters.release(version):
                self._retire_soon()
        if final is None or len(final.outputs) != n:
            got = 0 if final is None else len(final.outputs)
            raise RuntimeError(f"vLLM returned {got} completions for a request of n={n}")
        completions = [_to_completion(c, version) for c in sorted(final.outputs, key=lambda c: c.index)]
        if sampling.forced_new_tokens or not params.detokenize:
            # what was generated past EOS is filler: the text (which rewards read) ends where the answer ended
            completions = [dataclasses.replace(c, text=self._text_before_eos(c.token_ids)) for c in completions]
        return completions

    def _text_before_eos(self, token_ids: tuple[int, ...]) -> str:
        """The text of ``token_ids`` up to the first EOS, special tokens skipped (as vLLM's detokenizer does)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._model_path)
        eos = self._tokenizer.eos_token_id
        end = token_ids.index(eos) if eos in token_ids else len(token_ids)
        return self._tokenizer.decode(list(token_ids[:end]), skip_special_tokens=True)

    async def update_weights(self, weights: str | BucketFeed | LoraAdapter, version: int) -> float:
        """Pause in-flight requests, reload in place from ``weights`` (an HF safetensors folder, or a feed of
        buckets streamed into one reload), tag later tokens with ``version``, resume; returns seconds taken.
        On a failed reload the engine stays paused (its weights may be half-written) until a later update
        succeeds. An engine serving adapters takes a ``LoraAdapter`` instead (``load_adapter``)."""
        if isinstance(weights, LoraAdapter) or self._adapters:
            if not (isinstance(weights, LoraAdapter) and self._adapters):
                raise ValueError(f"update_weights(version={version}): {type(weights).__name__} for an engine "
                                 f"{'serving' if self._adapters else 'not serving'} LoRA adapters; learners and "
                                 "engines must agree on learner.lora.sync")
            return await self.load_adapter(weights, version)
        if isinstance(weights, BucketFeed):
            what = f"{len(weights.paths)} bucket(s) in {Path(weights.paths[0]).parent}"
            # plain values: collective_rpc serialises its arguments
            call = ("reload_weights_from_buckets", {"feed": {**dataclasses.asdict(weights), "version": version}})
        else:
            path = Path(weights)
            what = str(weights)
            # Check before pausing so an obviously wrong path costs in-flight requests nothing.
            if not path.is_dir() or not any(path.glob("*.safetensors")):
                raise FileNotFoundError(f"update_weights(version={version}): no *.safetensors files in {weights}")
            call = ("reload_weights_from", {"weights_path": str(path)})
        llm = self._live()
        async with self._update_lock:  # interleaved pause/reload/resume would mislabel tokens
            start = time.perf_counter()
            try:
                # "keep" freezes requests with the tokens they have; it returns once the core is
                # idle, so no step with the old weights can run after the label changes.
                # clear_cache drops KV computed by the old weights: requests recompute it (engine.kv_on_update).
                await llm.pause_generation(mode="keep", clear_cache=self._clear_kv_on_update)
                paused = time.perf_counter()
                # Tensors sent through collective_rpc arrive as lists on the CPU build, so
                # the worker reads the files itself.
                timings = (await llm.collective_rpc(call[0], kwargs=call[1]))[0]  # one dict per worker
                await llm.update_weight_version(str(version))
            except Exception as exc:
                raise RuntimeError(
                    f"update_weights: loading weights from {what} as version {version} failed "
                    f"({type(exc).__name__}: {exc}); generation stays paused until a later update_weights succeeds"
                ) from exc
            self._version = version
            await llm.resume_generation()
            seconds = time.perf_counter() - start
            self.last_update = {"pause_seconds": paused - start, **timings, "seconds": seconds}
            return seconds

    # -- LoRA adapters (learner.lora.sync=adapter) --------------------------------------------------------------
    async def load_adapter(self, adapter: LoraAdapter, version: int) -> float:
        """Load ``adapter`` as ``version`` for requests that start from now on; requests in flight finish with
        theirs, so nothing pauses. The engine owns ``adapter.path`` from here and deletes it on unloading."""
        from vllm.lora.request import LoRARequest

        async with self._update_lock:
            start = time.perf_counter()
            loaded = self._adapters.get(version)
            if loaded is not None:  # published again (a learner recovery): the same weights are loaded already
                self._adapters.reinstate(version)
                if Path(adapter.path).resolve() != Path(loaded.path).resolve():
                    shutil.rmtree(adapter.path, ignore_errors=True)
                await self._retire()
                self.last_update = {"seconds": time.perf_counter() - start}
                return self.last_update["seconds"]
            self._adapter_ids += 1
            request = LoRARequest(f"areal-v{version}", self._adapter_ids, adapter.path)
            try:
                await self._live().add_lora(request)  # loaded now, not on the first request that needs it
            except Exception as exc:
                raise RuntimeError(f"update_weights: loading LoRA adapters from {adapter.path} as version {version} "
                                   f"failed ({type(exc).__name__}: {exc}); requests keep version "
                                   f"{self._adapters.version}") from exc
            self._adapters.make_current(LoadedAdapter(version, request, adapter.path))
            await self._retire()
            seconds = time.perf_counter() - start
            self.last_update = {"seconds": seconds}
            return seconds

    async def _retire(self) -> None:
        """Unload the adapters no request uses any more, and delete their folders."""
        for old in self._adapters.retire():
            if self._llm is not None:
                await self._llm.remove_lora(old.request.lora_int_id)
            shutil.rmtree(old.path, ignore_errors=True)

    def _retire_soon(self) -> None:
        """``_retire`` from a request's end without making the request wait for it."""
        task = asyncio.get_running_loop().create_task(self._retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # -- native weight transfer (UNVERIFIED: docs/weight_sync.md) -------------------------------------------------
    # The learner's vLLM trainer engine drives these four steps; the pause/version protocol of update_weights is
    # split across them, with the update lock held from native_start to native_finish (or native_abort).
    async def native_init(self, init_info: dict) -> None:
        """Join the learner's transfer (an NCCL group, or CUDA IPC's settings); once per learner and engine."""
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        await self._live().init_weight_transfer_engine(WeightTransferInitRequest(init_info=init_info))

    async def native_start(self) -> None:
        """Pause generation as update_weights does and open vLLM's weight update."""
        llm = self._live()
        await self._update_lock.acquire()
        try:
            self._native_started = time.perf_counter()
            await llm.pause_generation(mode="keep", clear_cache=self._clear_kv_on_update)
            await llm.start_weight_update()
        except BaseException:
            await self.native_abort()
            raise

    async def native_update(self, update_info) -> None:
        """Receive one chunk (for NCCL, while the learner broadcasts it)."""
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        await self._live().update_weights(WeightTransferUpdateRequest(update_info=update_info))

    async def native_finish(self, version: int) -> None:
        """Close vLLM's weight update, tag later tokens with ``version``, resume."""
        llm = self._live()
        await llm.finish_weight_update()
        await llm.update_weight_version(str(version))
        self._version = version
        await llm.resume_generation()
        self.last_update = {"seconds": time.perf_counter() - self._native_started}
        self._native_started = 0.0
        self._update_lock.release()

    async def native_abort(self) -> None:
        """After a failed native update: free the update lock; generation stays paused until an update succeeds."""
        if self._native_started:
            self._native_started = 0.0
            self._update_lock.release()

    async def close(self) -> None:
        """Shut down the engine core and its worker processes."""
        llm, self._llm = self._llm, None
        for adapter in self._adapters.loaded() if self._adapters else ():
            shutil.rmtree(adapter.path, ignore_errors=True)
        if llm is not None:
            # Shut down while the interpreter is intact: AsyncLLM.__del__ at exit fails noisily. The CPU engine
            # core stops serving at once but then sits in the interpreter's exit-time garbage collection past
            # vLLM's 5 s grace before it is killed anyway, which every engine close (each run's end, every
            # replacement) paid; with no device memory to release, a 1 s grace loses nothing.
            llm.shutdown(timeout=None if torch.cuda.is_available() else CPU_SHUTDOWN_GRACE_S)
