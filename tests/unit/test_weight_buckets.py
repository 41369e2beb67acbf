"""The bucket transport without an engine: how a version is cut into buckets, written by the learner, staged on
another node and read back inside the engine process; and which transport a run picks from what it finds."""

import asyncio
import os
import threading
from pathlib import Path

import pytest
import torch

from areal.weight_sync import (MB, Bucket, TransportCaps, WeightManifest, WeightsUnavailable, choose_transport,
                               plan_buckets)
from learners.weight_export import FAMILY, BucketExporter
from rollouts.bucket_staging import stage_buckets, staged_feed
from rollouts.engines.base import BucketFeed
from rollouts.engines.bucket_reader import BucketLoadError, iter_bucket_tensors


def model_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A small decoder-shaped state dict in load order: an embedding, two layers, a final norm."""
    gen = torch.Generator().manual_seed(seed)
    state = {"model.embed_tokens.weight": torch.randn(64, 32, generator=gen)}
    for layer in range(2):
        for name, shape in (("self_attn.qkv.weight", (96, 32)), ("mlp.up.weight", (64, 32)), ("norm.weight", (32,))):
            state[f"model.layers.{layer}.{name}"] = torch.randn(*shape, generator=gen)
    state["model.norm.weight"] = torch.randn(32, generator=gen)
    return state


def sizes_of(state):
    return [(name, t.numel() * t.element_size()) for name, t in state.items()]


def export(exporter: BucketExporter, state, version: int) -> WeightManifest:
    return exporter.export(version, sizes_of(state), lambda names: {n: state[n] for n in names})


@pytest.fixture
def exporter(tmp_path):
    exporter = BucketExporter(bound_bytes=16 * 1024, root=tmp_path / "shm")  # 16 KiB: several buckets
    yield exporter
    exporter.remove()


# -- cutting and writing ------------------------------------------------------------------------------------------
def test_buckets_keep_the_load_order_and_never_exceed_the_bound_unless_one_tensor_is_larger():
    sizes = [("a", 6), ("b", 3), ("c", 2), ("big", 25), ("d", 4), ("e", 7)]
    buckets = plan_buckets(sizes, bound_bytes=10)
    assert buckets == [["a", "b"], ["c"], ["big"], ["d"], ["e"]]
    assert [name for bucket in buckets for name in bucket] == [name for name, _ in sizes]
    size = dict(sizes)
    assert all(sum(size[n] for n in b) <= 10 or len(b) == 1 for b in buckets)
    with pytest.raises(ValueError, match="rollout.weight_bucket_mb"):
        plan_buckets(sizes, 0)


def test_a_manifest_refuses_a_bucket_over_its_bound_or_a_tensor_in_two_buckets():
    with pytest.raises(ValueError, match="over the bound.*rollout.weight_bucket_mb"):
        WeightManifest(1, "/x", "", 10, (Bucket("bucket-00000.safetensors", ("a", "b"), 12),))
    WeightManifest(1, "/x", "", 10, (Bucket("bucket-00000.safetensors", ("big",), 25),))  # alone: allowed
    with pytest.raises(ValueError, match="in two buckets"):
        WeightManifest(1, "/x", "", 10, (Bucket("bucket-00000.safetensors", ("a",), 4),
                                         Bucket("bucket-00001.safetensors", ("a",), 4)))


def test_an_exported_version_reads_back_exactly_bucket_by_bucket_within_the_bound(exporter):
    state = model_state()
    manifest = export(exporter, state, version=3)
    assert len(manifest.buckets) > 2 and manifest.version == 3
    assert Path(manifest.directory).parent.name.startswith(f"{FAMILY}-pid{os.getpid()}-")
    header = 4096  # a safetensors header of a few tensors
    for bucket, path in zip(manifest.buckets, manifest.paths()):
        assert bucket.nbytes <= manifest.bound_bytes
        assert os.path.getsize(path) <= manifest.bound_bytes + header
    feed = BucketFeed(manifest.paths(), tuple(b.names for b in manifest.buckets), 3)
    got = list(iter_bucket_tensors(feed))
    assert [name for name, _ in got] == list(state)  # load order: each layer's tensors together
    assert all(torch.equal(tensor, state[name]) for name, tensor in got)


def test_the_learner_keeps_only_its_newest_version(exporter):
    first = export(exporter, model_state(0), version=1)
    second = export(exporter, model_state(1), version=2)
    assert not Path(first.directory).exists() and Path(second.directory).exists()
    assert [p.name for p in Path(second.directory).parent.iterdir()] == ["v000002"]


def test_reading_in_place_a_version_whose_files_are_gone_names_the_bucket_and_version(exporter):
    manifest = export(exporter, model_state(), version=5)
    os.unlink(manifest.paths()[1])
    feed = BucketFeed(manifest.paths(), tuple(b.names for b in manifest.buckets), 5)
    with pytest.raises(BucketLoadError, match=f"bucket 2 of {len(manifest.buckets)} of version 5 is missing"):
        list(iter_bucket_tensors(feed))


def test_a_bucket_that_does_not_hold_what_its_manifest_says_is_refused(exporter):
    manifest = export(exporter, model_state(), version=5)
    names = tuple(b.names for b in manifest.buckets)
    swapped = (names[1],) + names[1:]
    with pytest.raises(BucketLoadError, match="bucket 1 of .* unlike its manifest"):
        list(iter_bucket_tensors(BucketFeed(manifest.paths(), swapped, 5)))


# -- staging for an engine on another node ------------------------------------------------------------------------
def read_in_thread(feed: BucketFeed, staged_dir: Path):
    """The engine's side in a thread: every tensor, and the most bucket files staged at any time."""
    result = {"tensors": [], "max_staged": 0}

    def run():
        try:
            for name, tensor in iter_bucket_tensors(feed):
                result["tensors"].append((name, tensor.clone()))
                staged = [p for p in staged_dir.iterdir() if p.name.endswith(".safetensors")]
                result["max_staged"] = max(result["max_staged"], len(staged))
        except Exception as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def file_fetch(manifest, fail_at: int | None = None):
    async def fetch(index):
        await asyncio.sleep(0.01)
        if index == fail_at:
            raise WeightsUnavailable(f"bucket {index + 1} is gone with its node")
        return Path(manifest.paths()[index]).read_bytes()

    return fetch


def test_staged_buckets_arrive_whole_and_at_most_two_are_staged_at_once(exporter, tmp_path):
    state = model_state()
    manifest = export(exporter, state, version=7)
    staged = tmp_path / "staged"
    staged.mkdir()
    feed = staged_feed(manifest, staged, wait_s=30)
    thread, result = read_in_thread(feed, staged)
    asyncio.run(stage_buckets(manifest, file_fetch(manifest), staged))
    thread.join(30)
    assert "error" not in result
    assert [n for n, _ in result["tensors"]] == list(state)
    assert all(torch.equal(t, state[n]) for n, t in result["tensors"])
    assert result["max_staged"] <= 2
    assert list(staged.iterdir()) == []  # each consumed bucket was deleted


def test_a_failed_fetch_stops_the_engine_at_once_with_the_reason(exporter, tmp_path):
    manifest = export(exporter, model_state(), version=8)
    staged = tmp_path / "staged"
    staged.mkdir()
    thread, result = read_in_thread(staged_feed(manifest, staged, wait_s=60), staged)
    with pytest.raises(WeightsUnavailable):
        asyncio.run(stage_buckets(manifest, file_fetch(manifest, fail_at=1), staged))
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(result["error"], BucketLoadError)
    assert "bucket 2 of" in str(result["error"]) and "gone with its node" in str(result["error"])


def test_a_staged_bucket_that_never_comes_fails_naming_the_timeout_setting(exporter, tmp_path):
    manifest = export(exporter, model_state(), version=9)
    feed = staged_feed(manifest, tmp_path, wait_s=0.2)
    with pytest.raises(BucketLoadError, match=r"did not arrive .* within 0s \(rollout.weight_sync_timeout_s\)"):
        list(iter_bucket_tensors(feed))


class ReadingEngine:
    """A backend that loads a feed as the vLLM engine does (through ``iter_bucket_tensors``) into a dict."""

    def __init__(self):
        self.weights, self.version = {}, 0

    async def update_weights(self, feed, version):
        tensors = await asyncio.to_thread(lambda: {n: t.clone() for n, t in iter_bucket_tensors(feed)})
        self.weights, self.version = tensors, version
        return 0.0


def test_a_rollout_worker_loads_a_manifest_in_place_or_through_staging(exporter, tmp_path):
    from rollouts.worker import RolloutWorker

    state = model_state()
    manifest = export(exporter, state, version=4)
    engine = ReadingEngine()
    worker = RolloutWorker(engine, None, tmp_path / "weights")
    asyncio.run(worker.load_weights(manifest, 4))
    assert engine.version == 4 and all(torch.equal(engine.weights[n], t) for n, t in state.items())
    assert Path(manifest.directory).exists()  # read in place: the learner's files stay for other engines
    engine.weights = {}
    asyncio.run(worker.load_weights(manifest, 4, fetch=file_fetch(manifest), wait_s=30))
    assert all(torch.equal(engine.weights[n], t) for n, t in state.items())
    assert list((tmp_path / "weights").iterdir()) == []  # nothing staged is left behind


def test_a_rollout_worker_reports_why_staging_failed_not_the_engines_symptom(exporter, tmp_path):
    from rollouts.worker import RolloutWorker

    manifest = export(exporter, model_state(), version=4)
    worker = RolloutWorker(ReadingEngine(), None, tmp_path / "weights")
    with pytest.raises(WeightsUnavailable, match="gone with its node"):
        asyncio.run(worker.load_weights(manifest, 4, fetch=file_fetch(manifest, fail_at=0), wait_s=30))


# -- which transport ----------------------------------------------------------------------------------------------
CPU = TransportCaps(text_engine=True, learner_on_gpu=False, engine_on_gpu=False, shared_gpu=False,
                    native_backends=frozenset({"nccl", "ipc"}))
GPUS = TransportCaps(text_engine=True, learner_on_gpu=True, engine_on_gpu=True, shared_gpu=False,
                     native_backends=frozenset({"nccl", "ipc"}))


def picked(requested, caps):
    choice = choose_transport(requested, caps)
    return choice.transport, choice.backend


def test_auto_takes_native_between_gpus_ipc_on_a_shared_one_and_buckets_on_cpu():
    assert picked("auto", GPUS) == ("native", "nccl")
    shared = TransportCaps(True, True, True, shared_gpu=True, native_backends=frozenset({"nccl", "ipc"}))
    assert picked("auto", shared) == ("native", "ipc")
    assert picked("auto", CPU) == ("buckets", "") and "CPU" in choose_transport("auto", CPU).reason
    diffusion = TransportCaps(False, True, True, False, frozenset({"nccl"}))
    assert picked("auto", diffusion) == ("files", "")


def test_a_vllm_without_the_native_backend_falls_back_to_buckets_and_says_why():
    without = TransportCaps(True, True, True, False, frozenset({"ipc"}))
    choice = choose_transport("auto", without)
    assert choice.transport == "buckets" and "no 'nccl' weight-transfer engine" in choice.reason
    with pytest.raises(ValueError, match="rollout.weight_transport = 'native' cannot run.*'nccl'"):
        choose_transport("native", without)


def test_explicit_transports_are_kept_or_refused_naming_the_key():
    assert choose_transport("files", GPUS).transport == "files"
    assert choose_transport("buckets", GPUS).transport == "buckets"
    with pytest.raises(ValueError, match="rollout.weight_transport = 'native' cannot run.*CPU"):
        choose_transport("native", CPU)
    with pytest.raises(ValueError, match="rollout.weight_transport = 'buckets' with engine.type=diffusers"):
        choose_transport("buckets", TransportCaps(False, False, False, False))
    with pytest.raises(ValueError, match="rollout.weight_transport = 'nccl'"):
        choose_transport("nccl", GPUS)


def fake_importer(modules: dict):
    def import_module(name):
        if name not in modules:
            raise ImportError(f"No module named {name!r}")
        return modules[name]

    return import_module


class Namespace:
    def __init__(self, **attrs):
        self.__dict__.update(attrs)


def test_detection_finds_no_native_backend_in_a_vllm_without_the_api():
    from rollouts.engines.vllm_native import detect_native_backends

    found, why = detect_native_backends(fake_importer({}))
    assert found == frozenset() and "no weight-transfer API" in why
    old_llm = Namespace(AsyncLLM=type("AsyncLLM", (), {"collective_rpc": lambda self: None}))
    transfer = Namespace(WeightTransferEngineFactory=Namespace(_registry={"nccl": 1}),
                         WeightTransferTrainerFactory=Namespace(_registry={"nccl": 1}))
    found, why = detect_native_backends(fake_importer({"vllm.distributed.weight_transfer": transfer,
                                                       "vllm.v1.engine.async_llm": old_llm}))
    assert found == frozenset() and "AsyncLLM lacks init_weight_transfer_engine" in why
    calls = {name: (lambda self: None) for name in ("init_weight_transfer_engine", "start_weight_update",
                                                   "update_weights", "finish_weight_update", "update_weight_version")}
    new_llm = Namespace(AsyncLLM=type("AsyncLLM", (), calls))
    found, why = detect_native_backends(fake_importer({"vllm.distributed.weight_transfer": transfer,
                                                       "vllm.v1.engine.async_llm": new_llm}))
    assert found == frozenset({"nccl"}) and why == ""
    caps = TransportCaps(True, True, True, True, found)  # a shared GPU wants ipc, which this vLLM lacks
    assert choose_transport("auto", caps).transport == "buckets"


def test_a_cpu_run_never_asks_vllm_and_streams_buckets():
    from actors.weight_transport import run_transport
    from areal.config import TrainConfig

    choice = run_transport(TrainConfig(), learner_on_gpu=False, engine_on_gpu=False)
    assert choice.transport == "buckets" and "CPU" in choice.reason


def test_the_bucket_size_and_transport_are_checked_at_load_naming_the_key():
    from areal.config import RolloutConfig

    with pytest.raises(ValueError, match="rollout.weight_bucket_mb = 0"):
        RolloutConfig(weight_bucket_mb=0)
    with pytest.raises(ValueError, match="rollout.weight_transport = 'ftp'"):
        RolloutConfig(weight_transport="ftp")
    assert RolloutConfig().weight_bucket_mb * MB == 256 * MB


def test_a_diffusion_run_refuses_buckets_at_load():
    from areal.config import EngineConfig, RolloutConfig, TaskConfig, TrainConfig

    with pytest.raises(ValueError, match="rollout.weight_transport = 'buckets'; expected auto or files"):
        TrainConfig(engine=EngineConfig(type="diffusers"), task=TaskConfig(type="image_prompts"),
                    rollout=RolloutConfig(weight_transport="buckets"))
