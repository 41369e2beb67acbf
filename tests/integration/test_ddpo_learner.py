"""The DDPO learner (DeepSpeed, one rank): a step follows the advantages, its weights reach a sampler
exactly, and a checkpoint is a loadable pipeline that training continues from exactly.

Learner and sampler run where they do in production: on cuda when present (the learner's denoiser in bf16,
the sampler's in float32), else on the CPU (both float32). Scores are compared on the host, with today's
float32 tolerances on the CPU and bf16 ones on cuda."""

import asyncio

import pytest
import torch

from areal.algos.ddpo import PerPromptStatTracker
from areal.batching import ChainBatcher
from areal.config import AlgoConfig, DiffusionConfig, LearnerConfig
from areal.types import ChainTrajectory, TrajectoryGroup
from tests.tiny_pipelines import class_conditional_pipeline

pytestmark = pytest.mark.slow
DIFFUSION = DiffusionConfig(num_steps=4, timestep_fraction=0.5, guidance_scale=2.0)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return str(class_conditional_pipeline(tmp_path_factory.mktemp("pipe")))


def make_learner(path, device, learner_options=None, **diffusion):
    from learners.ddpo_learner import DDPOLearner
    from learners.deepspeed_setup import Rendezvous

    cfg = DiffusionConfig(**{**DIFFUSION.__dict__, **diffusion})
    learner_cfg = LearnerConfig(lr=1e-5, minibatches=1, **(learner_options or {}))
    learner = DDPOLearner(path, learner_cfg, AlgoConfig(eps_clip=1e-4), cfg,
                          Rendezvous(master_port=29671), seed=0, total_updates=10)
    assert learner.device.type == learner.policy.device.type == device.type
    return learner


def bf16(policy) -> bool:
    """Whether ``policy``'s denoiser computes in bf16 (a learner's, once DeepSpeed trains it on a GPU)."""
    return next(policy.unet.parameters()).dtype == torch.bfloat16


def float32_denoiser(policy):
    """None for a float32 denoiser (score with it); for a bf16 one, a float32 copy of its weights (widened
    exactly), so a comparison of scores is not drowned by bf16 arithmetic. Full fine-tuning only (no LoRA)."""
    if not bf16(policy):
        return None
    unet = type(policy.unet).from_config(policy.unet.config)
    unet.load_state_dict({k: v.float() for k, v in policy.unet.state_dict().items()})
    return unet.to(policy.device)


# |pi_behav - pi_prox| per step when a bf16 learner re-scores the steps of a float32 sampler: a CPU emulation
# (bf16-rounded weights and bf16 compute) measured 0.015-0.017 on average and at most 0.034 for the worst
# choice of trained steps; a mis-scored step (wrong timestep, conditioning or guidance) is off by O(1)
BF16_KL_TOLERANCE = 0.1


def sample_batch(pipe_path, device, seed=0):
    """Two prompts x 4 chains from the pipeline itself; reward = mean brightness (a stand-in any test can check)."""
    from rollouts.engines.diffusion_sampler import DiffusionSampler

    sampler = DiffusionSampler(pipe_path, DIFFUSION, device=device)
    groups = []
    for i, prompt in enumerate(("red", "blue")):
        chains = asyncio.run(sampler.sample(prompt, 4, seed=seed + i))
        groups.append(TrajectoryGroup(prompt, tuple(
            ChainTrajectory(prompt, c.latents, c.timesteps, c.logprobs, c.versions, float(c.image.mean()))
            for c in chains), 0))
    return ChainBatcher(PerPromptStatTracker(16, 1)).build(groups)


def chain_logprob(policy, batch, denoiser=None):
    """Sum over steps of each chain's log-probability under ``policy``'s weights, on the host: [N].

    As the learner scores a step: inputs on the policy's device, the denoiser in its own dtype, the DDIM
    step's log-probability in float32."""
    from areal.algos.ddpo import ddim_step_with_logprob

    n, steps = batch.timesteps.shape
    cond = policy.condition(list(batch.prompts))
    dtype = next((denoiser or policy.unet).parameters()).dtype
    if cond is not None and cond.is_floating_point():
        cond = cond.to(dtype)
    total = torch.zeros(n)
    with torch.no_grad():
        for k in range(steps):
            t = batch.timesteps[:, k].to(policy.device)
            x, x_prev = batch.latents[:, k].to(policy.device), batch.latents[:, k + 1].to(policy.device)
            eps = policy.predict_noise(x.to(dtype), t, cond, denoiser).float()
            total += ddim_step_with_logprob(policy.scheduler, eps, t, x, prev_sample=x_prev)[1].float().cpu()
    return total


def test_a_step_raises_the_likelihood_of_chains_with_positive_advantage(pipe, device, full_float32):
    learner = make_learner(pipe, device)
    batch = sample_batch(pipe, device)
    # a bf16 learner's weights are scored in float32: its 1e-5 step moves few bf16 weights, by less than
    # bf16 arithmetic would blur (measured in a CPU emulation: the sign came out wrong for 2 of 4 batches)
    before = chain_logprob(learner.policy, batch, float32_denoiser(learner.policy))
    stats = learner.train_step(batch)
    after = chain_logprob(learner.policy, batch, float32_denoiser(learner.policy))
    assert float((batch.advantages * (after - before)).sum()) > 0
    assert stats["learner/denoising_steps"] == len(batch) * DIFFUSION.trained_steps
    # fresh chains: pi_behav = pi_prox, up to a bf16 learner re-scoring a float32 sampler's steps on cuda
    kl_tolerance = BF16_KL_TOLERANCE if bf16(learner.policy) else 1e-5
    assert stats["learner/behavior_proximal_kl"] == pytest.approx(0.0, abs=kl_tolerance)
    assert learner.version == 1


def test_shipped_weights_make_a_sampler_score_chains_as_the_learner_does(pipe, device, tmp_path, full_float32):
    from rollouts.engines.diffusion_sampler import DiffusionSampler

    learner = make_learner(pipe, device)
    batch = sample_batch(pipe, device, seed=5)
    learner.train_step(batch)
    for name, data in learner.weights_payload().items():
        (tmp_path / name).write_bytes(data)
    sampler = DiffusionSampler(pipe, DIFFUSION, device=device)
    asyncio.run(sampler.update_weights(str(tmp_path), 1))
    # the weights arrive exactly (a bf16 learner's widened to the sampler's float32)
    shipped, trained = sampler.policy.unet.state_dict(), learner.policy.unet.state_dict()
    for name in learner.trainable:
        assert torch.equal(shipped[name].cpu(), trained[name].cpu().to(shipped[name].dtype)), name
    # and score chains as the learner's weights do (in float32: the sampler's precision)
    torch.testing.assert_close(chain_logprob(sampler.policy, batch),
                               chain_logprob(learner.policy, batch, float32_denoiser(learner.policy)),
                               rtol=0, atol=1e-5)


@pytest.fixture
def deterministic_kernels(device):
    """Bitwise-repeatable training on cuda: deterministic implementations wherever torch has one (cuDNN's
    deterministic kernels come with ``full_float32``)."""
    if device.type != "cuda":
        yield
        return
    saved = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])


def test_a_checkpoint_is_a_pipeline_and_training_continues_from_it_exactly(pipe, device, tmp_path, full_float32,
                                                                            deterministic_kernels):
    from diffusers import DDPMPipeline

    batch1, batch2 = sample_batch(pipe, device, seed=1), sample_batch(pipe, device, seed=2)
    learner = make_learner(pipe, device)
    learner.train_step(batch1)
    learner.write_checkpoint_shard(tmp_path / "ckpt")
    DDPMPipeline.from_pretrained(tmp_path / "ckpt" / "model")  # usable by diffusers on its own
    learner.train_step(batch2)

    resumed = make_learner(str(tmp_path / "ckpt" / "model"), device)
    resumed.load_training_state(tmp_path / "ckpt")
    resumed.train_step(batch2)
    assert resumed.weights_digest() == learner.weights_digest()


def test_lora_learners_train_and_ship_only_the_adapters(pipe, device):
    learner = make_learner(pipe, device, lora_rank=4)
    frozen = {k: v.clone() for k, v in learner.policy.unet.state_dict().items() if "lora_" not in k}
    learner.train_step(sample_batch(pipe, device))
    (payload,) = learner.weights_payload().values()
    from safetensors.torch import load

    shipped = load(payload)
    assert shipped and all("lora_" in k for k in shipped)
    now = learner.policy.unet.state_dict()
    assert all(torch.equal(now[k], v) for k, v in frozen.items())


def minibatch_gradient(learner, batch):
    """The proximal log-probs and the accumulated gradient of one minibatch over fixed trained steps."""
    n, k = len(batch), learner.diffusion.trained_steps
    gen = torch.Generator().manual_seed(0)
    chosen = torch.stack([torch.randperm(batch.timesteps.shape[1], generator=gen)[:k] for _ in range(n)])
    cond = learner.policy.condition(list(batch.prompts))
    behavior = batch.behavior_logprobs[torch.arange(n)[:, None], chosen].to(learner.device)
    proximal = learner.proximal_logprobs(batch, chosen, cond)
    learner.engine.train()
    learner.train_minibatch(batch, torch.arange(n), chosen, cond, (proximal, behavior, batch.advantages.to(
        learner.device)), {})
    grads = {name: p.grad.float().cpu().clone() for name, p in learner.engine.module.named_parameters()}
    for p in learner.engine.module.parameters():
        p.grad = None
    return proximal.cpu(), grads


def test_micro_batches_of_chains_and_checkpointing_leave_the_gradient_unchanged(pipe, device, full_float32):
    batch = sample_batch(pipe, device, seed=3)
    ref_proximal, ref_grads = minibatch_gradient(make_learner(pipe, device), batch)
    # relative to each tensor's largest gradient entry: convolution backward sums in an order that depends on
    # the batch size (measured on the CPU: at most 5e-5 apart; a lost or double-counted chain moves it by ~10%);
    # gradients that are zero in exact arithmetic (attention's key bias) are held to the model's overall scale
    tolerance = 3e-2 if device.type == "cuda" else 2e-4
    floor = 1e-3 * max(float(g.abs().max()) for g in ref_grads.values())
    for options, diffusion in (({}, {"images_per_forward": 3}),
                               ({"gradient_checkpointing": True}, {"images_per_forward": 5})):
        proximal, grads = minibatch_gradient(make_learner(pipe, device, options, **diffusion), batch)
        torch.testing.assert_close(proximal, ref_proximal, rtol=tolerance, atol=1e-5)
        for name, grad in ref_grads.items():
            error = float((grads[name] - grad).abs().max())
            assert error <= tolerance * max(float(grad.abs().max()), floor), (options, diffusion, name, error)
