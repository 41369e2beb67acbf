"""The DDIM sampler: what it records is what the learner re-scores, chain by chain, whatever the batching.

The sampler runs on ``device`` (cuda when present), as in production, in full float32 (``full_float32``: no
TF32). Its chains come back on the host, where they are compared."""

import asyncio

import numpy as np
import pytest
import torch

from areal.algos.ddpo import ddim_step_with_logprob
from areal.config import DiffusionConfig
from rollouts.engines.diffusion_sampler import DiffusionSampler
from tests.tiny_pipelines import class_conditional_pipeline, text_conditional_pipeline

pytestmark = pytest.mark.usefixtures("full_float32")


@pytest.fixture(scope="module")
def class_pipe(tmp_path_factory):
    return str(class_conditional_pipeline(tmp_path_factory.mktemp("class-pipe")))


def slack(device) -> float:
    """Tolerance factor: cuDNN picks its kernels by batch size, and their float32 rounding differs more than
    the CPU's between one batching and another."""
    return 1.0 if device.type == "cpu" else 10.0


def rescore(policy, chain, prompt):
    """Log-probs of a stored chain's steps, evaluated in one batch on the policy's device (as a learner does),
    returned on the host."""
    steps = len(chain.timesteps)
    t = torch.tensor(chain.timesteps, device=policy.device)
    latents = chain.latents.to(policy.device)
    with torch.no_grad():
        eps = policy.predict_noise(latents[:-1], t, policy.condition([prompt] * steps))
        _, logp = ddim_step_with_logprob(policy.scheduler, eps, t, latents[:-1], prev_sample=latents[1:])
    return logp.cpu()


def test_rescoring_a_stored_chain_gives_its_recorded_logprobs(class_pipe, device):
    sampler = DiffusionSampler(class_pipe, DiffusionConfig(num_steps=6, guidance_scale=2.0), device=device)
    chains = asyncio.run(sampler.sample("blue", 3, seed=11))
    for chain in chains:
        assert chain.latents.shape == (7, 3, 16, 16) and chain.image.shape == (16, 16, 3)
        assert chain.versions == (0,) * 6
        assert chain.latents.device.type == "cpu" and isinstance(chain.image, np.ndarray)
        torch.testing.assert_close(rescore(sampler.policy, chain, "blue"), torch.tensor(chain.logprobs),
                                   rtol=0, atol=1e-5 * slack(device))


def test_a_chain_depends_on_its_seed_not_on_what_shared_its_batch(class_pipe, device):
    sampler = DiffusionSampler(class_pipe, DiffusionConfig(num_steps=4, max_batch=3), device=device)

    async def together():
        return await asyncio.gather(sampler.sample("red", 4, seed=1), sampler.sample("blue", 2, seed=2))

    batched, _ = asyncio.run(together())
    alone = asyncio.run(sampler.sample("red", 4, seed=1))
    for a, b in zip(batched, alone):
        # equal up to the rounding of batched kernels (measured: 1e-5 in latents, 2e-7 in log-probs)
        torch.testing.assert_close(a.latents, b.latents, rtol=0, atol=1e-4 * slack(device))
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), rtol=0,
                                   atol=1e-5 * slack(device))
    other = asyncio.run(sampler.sample("red", 4, seed=2))
    assert not torch.equal(other[0].latents, alone[0].latents)
    assert not torch.equal(alone[0].latents, alone[1].latents)  # the n chains of a request differ


def test_weights_change_between_steps_and_each_step_carries_its_version(class_pipe, device, tmp_path):
    from safetensors.torch import save_file

    sampler = DiffusionSampler(class_pipe, DiffusionConfig(num_steps=8, max_batch=1), device=device)
    new = {k: v + 0.01 for k, v in sampler.policy.unet.state_dict().items()}
    save_file(new, tmp_path / "denoiser.safetensors")

    async def run():
        task = asyncio.create_task(sampler.sample("red", 1, seed=3))
        while not sampler._running or len(sampler._running[0].latents) < 3:
            await asyncio.sleep(0.001)
        await sampler.update_weights(str(tmp_path), 1)
        return await task

    (chain,) = asyncio.run(run())
    assert chain.versions[0] == 0 and chain.versions[-1] == 1
    assert list(chain.versions) == sorted(chain.versions)
    assert sampler.version == 1
    loaded = sampler.policy.unet.state_dict()["conv_in.weight"]
    assert loaded.device.type == device.type
    torch.testing.assert_close(loaded.cpu(), new["conv_in.weight"].cpu())


def test_weights_for_another_denoiser_are_refused(class_pipe, device, tmp_path):
    from safetensors.torch import save_file

    sampler = DiffusionSampler(class_pipe, DiffusionConfig(num_steps=2), device=device)
    save_file({"not.a.weight": torch.zeros(1)}, tmp_path / "denoiser.safetensors")
    with pytest.raises(ValueError, match="lora_rank must match"):
        asyncio.run(sampler.update_weights(str(tmp_path), 1))
    assert sampler.version == 0


def test_a_cancelled_request_stops_using_denoising_steps(class_pipe, device):
    sampler = DiffusionSampler(class_pipe, DiffusionConfig(num_steps=50, max_batch=4), device=device)

    async def run():
        task = asyncio.create_task(sampler.sample("red", 2, seed=0))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return len(sampler._running)

    assert asyncio.run(run()) == 0


def test_unknown_prompts_and_impossible_guidance_are_refused(class_pipe, device, tmp_path):
    sampler = DiffusionSampler(class_pipe, DiffusionConfig(num_steps=2), device=device)
    with pytest.raises(ValueError, match="not classes"):
        asyncio.run(sampler.sample("green", 1, seed=0))
    (tmp_path / "unet").mkdir()
    import json
    import shutil

    shutil.copytree(class_pipe, tmp_path / "no-null", dirs_exist_ok=True)
    (tmp_path / "no-null" / "class_labels.json").write_text(json.dumps({"labels": ["red", "blue"], "null_class": None}))
    with pytest.raises(ValueError, match="guidance_scale"):
        DiffusionSampler(str(tmp_path / "no-null"), DiffusionConfig(num_steps=2, guidance_scale=3.0), device=device)


def test_text_pipelines_with_guidance_and_lora_adapters(tmp_path, device):
    """Stable Diffusion's layout: text encoder + VAE; with LoRA only the adapters train and ship."""
    pipe = str(text_conditional_pipeline(tmp_path / "sd"))
    sampler = DiffusionSampler(pipe, DiffusionConfig(num_steps=3, guidance_scale=4.0, lora_rank=2), device=device)
    (chain,) = asyncio.run(sampler.sample("a red circle", 1, seed=5))
    assert chain.latents.shape == (4, 4, 8, 8) and chain.image.shape == (16, 16, 3)
    torch.testing.assert_close(rescore(sampler.policy, chain, "a red circle"), torch.tensor(chain.logprobs),
                               rtol=0, atol=1e-5 * slack(device))
    policy = sampler.policy
    trainable = policy.trainable_names()
    assert trainable and all("lora_" in name for name in trainable)
    adapters = {n: p.detach() + 0.5 for n, p in policy.unet.named_parameters() if n in trainable}
    saved = policy.save_pipeline(tmp_path / "ckpt", adapters)
    assert (saved / "lora" / "adapter.safetensors").exists() and (saved / "text_encoder").is_dir()
    reloaded = DiffusionSampler(str(saved), DiffusionConfig(num_steps=3, lora_rank=2), device=device).policy
    for name, value in adapters.items():
        torch.testing.assert_close(dict(reloaded.unet.named_parameters())[name].cpu(), value.cpu())


def test_a_bf16_denoiser_takes_guidance_with_text_conditioning(tmp_path, device):
    """A GPU learner's denoiser is bf16 and gets bf16 text embeddings: the null embedding for guidance
    follows their dtype (else torch.cat widens the pair to float32, which the bf16 denoiser refuses)."""
    from areal.models.diffusion_policy import DiffusionPolicy

    policy = DiffusionPolicy(text_conditional_pipeline(tmp_path / "sd"), num_steps=3, guidance_scale=4.0,
                             device=device)
    policy.unet.to(torch.bfloat16)  # what DeepSpeed does to the learner's denoiser in bf16
    cond = policy.condition(["a red circle", "a blue square"]).to(torch.bfloat16)
    x = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        eps = policy.predict_noise(x.to(torch.bfloat16), torch.tensor([667, 667], device=device), cond)
    assert eps.dtype == torch.bfloat16 and eps.shape == x.shape and bool(torch.isfinite(eps).all())


def test_unconditional_pipelines_ignore_the_prompt(tmp_path, device):
    pipe = str(class_conditional_pipeline(tmp_path / "uncond", unconditional=True))
    sampler = DiffusionSampler(pipe, DiffusionConfig(num_steps=3), device=device)
    assert sampler.policy.kind == "unconditional"
    (a,) = asyncio.run(sampler.sample("anything", 1, seed=4))
    (b,) = asyncio.run(sampler.sample("something else", 1, seed=4))
    assert torch.equal(a.latents, b.latents)
    torch.testing.assert_close(rescore(sampler.policy, a, "x"), torch.tensor(a.logprobs), rtol=0,
                               atol=1e-5 * slack(device))
