"""learner.lora.sync=adapter: a version reaches vLLM as its LoRA adapters alone, served as a LoRA request on the
unchanged base model; every token is sampled from, and tagged with, the adapter of one version.

One learner and one vLLM engine (with LoRA enabled) serve the module; float32 on the CPU, tight tolerances.
"""

import asyncio
import importlib.util
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from areal.config import AlgoConfig, LearnerConfig, LoraConfig
from areal.config.engine import EngineConfig
from rollouts.engines.base import SamplingConfig

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]
PROMPTS = [[5 + i, 40 + 3 * i, 60 + i, 70 - i, 33 + 2 * i, 50, 51 + i, 9] for i in range(4)]
RANK = 8


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def root():
    path = Path(tempfile.mkdtemp(prefix="lora_sync_test_", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def learner(root):
    from launch.tiny_model import make_random_tiny_model
    from learners.deepspeed_setup import Rendezvous
    from learners.lm_learner import LMLearner

    base = make_random_tiny_model(root / "base")
    cfg = LearnerConfig(lora=LoraConfig(rank=RANK, alpha=16, sync="adapter"))
    learner = LMLearner(str(base), cfg, AlgoConfig(), rdv=Rendezvous(master_port=29657), adapter_sync=True)
    yield learner
    learner.remove_exports()


@pytest.fixture(scope="module")
def worker(loop, learner, root):
    from rollouts.engines.vllm_engine import VLLMEngine
    from rollouts.worker import RolloutWorker

    async def start():
        return VLLMEngine(EngineConfig(kv_cache_gb=0.25, max_model_len=256), str(learner.lora.base_path),
                          lora_rank=RANK, max_loras=3)

    engine = loop.run_until_complete(start())
    worker = RolloutWorker(engine, workflow=None, weights_root=root / "rollout")
    yield worker
    loop.run_until_complete(engine.close())


def new_adapters(learner, seed):
    """Give every adapter random values (B starts at zero, which would make the adapter a no-op), as version+1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in learner.engine.module.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    learner.version += 1
    return learner.weights_manifest(1 << 20, root=str(Path(learner.lora.base_path).parent / "exports"))


def publish(loop, worker, manifest):
    return loop.run_until_complete(worker.load_weights(manifest, manifest.version))


def learner_logprobs(learner, prompt, tokens, temperature=1.0):
    ids = torch.tensor([list(prompt) + list(tokens)])
    with torch.no_grad():
        logits = learner.engine.module(ids).logits[0, len(prompt) - 1:-1].float()
    table = torch.log_softmax(logits / temperature, dim=-1)
    return table.gather(1, torch.tensor(tokens).unsqueeze(1)).squeeze(1)


def test_an_adapter_export_carries_only_the_adapters_under_peft_names_with_their_config(learner):
    import json

    manifest = new_adapters(learner, seed=0)
    names = [n for b in manifest.buckets for n in b.names]
    assert names and all(n.startswith("base_model.model.") and ".lora_" in n for n in names)
    adapter_bytes = sum(p.numel() * 4 for n, p in learner.engine.module.named_parameters() if "lora_" in n)
    assert manifest.total_bytes == adapter_bytes
    config = json.loads(manifest.adapter_config)
    assert config["r"] == RANK and config["lora_alpha"] == 16 and config["peft_type"] == "LORA"


def test_sampled_tokens_and_logprobs_are_the_learners_adapted_model_and_carry_its_version(loop, learner, worker):
    manifest = new_adapters(learner, seed=1)
    publish(loop, worker, manifest)
    assert worker.engine.version == manifest.version

    async def run():
        return await asyncio.gather(*(worker.engine.generate(p, SamplingConfig(max_new_tokens=12, temperature=1.0,
                                                                               seed=3), 2) for p in PROMPTS))

    for prompt, completions in zip(PROMPTS, loop.run_until_complete(run())):
        for c in completions:
            assert c.versions == (manifest.version,) * len(c.token_ids)
            expected = learner_logprobs(learner, prompt, c.token_ids)
            torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=2e-4, rtol=1e-4)


def test_requests_in_flight_finish_on_their_adapter_and_old_adapters_are_unloaded_after(loop, learner, worker):
    first = new_adapters(learner, seed=2)
    publish(loop, worker, first)
    second = new_adapters(learner, seed=4)
    long = SamplingConfig(max_new_tokens=150, temperature=1.0, seed=5)

    async def run():
        in_flight = asyncio.create_task(worker.engine.generate(PROMPTS[0], long))
        await asyncio.sleep(0.3)  # it has started on the first adapter
        assert not in_flight.done()
        await worker.load_weights(second, second.version)  # no pause: the long request keeps going
        newer = await worker.engine.generate(PROMPTS[1], SamplingConfig(max_new_tokens=8, temperature=0.0))
        return (await in_flight)[0], newer[0]

    old, new = loop.run_until_complete(run())
    assert old.versions == (first.version,) * len(old.token_ids) and len(old.token_ids) == 150
    assert new.versions == (second.version,) * len(new.token_ids)
    expected = learner_logprobs(learner, PROMPTS[1], new.token_ids)  # the learner holds the second adapters
    torch.testing.assert_close(torch.tensor(new.logprobs), expected, atol=2e-4, rtol=1e-4)
    loop.run_until_complete(asyncio.sleep(0.2))  # the first adapter is retired once its last request ends
    folders = sorted(p.name for p in (worker.weights_root).glob("adapter-v*"))
    assert len(folders) == 1 and folders[0].startswith(f"adapter-v{second.version:06d}-")


def test_a_version_published_again_after_a_learner_recovery_is_harmless(loop, learner, worker):
    """A restored learner group republishes the checkpoint's version, which the engine serves already: the served
    adapter's folder stays, nothing is loaded twice, requests go on with that version."""
    manifest = new_adapters(learner, seed=6)
    publish(loop, worker, manifest)
    served = sorted(worker.weights_root.glob(f"adapter-v{manifest.version:06d}-*"))
    again = learner.weights_manifest(1 << 20, root=str(Path(learner.lora.base_path).parent / "exports"))
    assert again.version == manifest.version
    publish(loop, worker, again)
    assert sorted(worker.weights_root.glob(f"adapter-v{manifest.version:06d}-*")) == served
    assert all((folder / "adapter_model.safetensors").exists() for folder in served)
    (completion,) = loop.run_until_complete(worker.engine.generate(PROMPTS[2], SamplingConfig(max_new_tokens=6,
                                                                                              temperature=0.0)))
    assert worker.engine.version == manifest.version and completion.versions == (manifest.version,) * 6


def test_a_merged_or_bucket_update_is_refused_by_an_engine_serving_adapters(loop, worker, learner):
    with pytest.raises(ValueError, match="learner.lora.sync"):
        loop.run_until_complete(worker.engine.update_weights(str(learner.lora.base_path), 99))
