"""The DDPO learner on CPU (DeepSpeed, one rank): a step follows the advantages, its weights reach a sampler
exactly, and a checkpoint is a loadable pipeline that training continues from exactly."""

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


def make_learner(path, **diffusion):
    from learners.ddpo_learner import DDPOLearner
    from learners.deepspeed_setup import Rendezvous

    cfg = DiffusionConfig(**{**DIFFUSION.__dict__, **diffusion})
    return DDPOLearner(path, LearnerConfig(lr=1e-5, minibatches=1), AlgoConfig(eps_clip=1e-4), cfg,
                       Rendezvous(master_port=29671), seed=0, total_updates=10)


def sample_batch(pipe_path, seed=0):
    """Two prompts x 4 chains from the pipeline itself; reward = mean brightness (a stand-in any test can check)."""
    from rollouts.engines.diffusion_sampler import DiffusionSampler

    sampler = DiffusionSampler(pipe_path, DIFFUSION)
    groups = []
    for i, prompt in enumerate(("red", "blue")):
        chains = asyncio.run(sampler.sample(prompt, 4, seed=seed + i))
        groups.append(TrajectoryGroup(prompt, tuple(
            ChainTrajectory(prompt, c.latents, c.timesteps, c.logprobs, c.versions, float(c.image.mean()))
            for c in chains), 0))
    return ChainBatcher(PerPromptStatTracker(16, 1)).build(groups)


def chain_logprob(policy, batch, denoiser=None):
    """Sum over steps of each chain's log-probability under ``policy``'s weights: [N]."""
    from areal.algos.ddpo import ddim_step_with_logprob

    n, steps = batch.timesteps.shape
    cond = policy.condition(list(batch.prompts))
    total = torch.zeros(n)
    with torch.no_grad():
        for k in range(steps):
            t = batch.timesteps[:, k]
            eps = policy.predict_noise(batch.latents[:, k], t, cond, denoiser)
            total += ddim_step_with_logprob(policy.scheduler, eps, t, batch.latents[:, k],
                                            prev_sample=batch.latents[:, k + 1])[1]
    return total


def test_a_step_raises_the_likelihood_of_chains_with_positive_advantage(pipe):
    learner = make_learner(pipe)
    batch = sample_batch(pipe)
    before = chain_logprob(learner.policy, batch)
    stats = learner.train_step(batch)
    after = chain_logprob(learner.policy, batch)
    assert float((batch.advantages * (after - before)).sum()) > 0
    assert stats["learner/denoising_steps"] == len(batch) * DIFFUSION.trained_steps
    assert stats["learner/behavior_proximal_kl"] == pytest.approx(0.0, abs=1e-5)  # fresh chains: pi_behav = pi_prox
    assert learner.version == 1


def test_shipped_weights_make_a_sampler_score_chains_as_the_learner_does(pipe, tmp_path):
    from rollouts.engines.diffusion_sampler import DiffusionSampler

    learner = make_learner(pipe)
    batch = sample_batch(pipe, seed=5)
    learner.train_step(batch)
    for name, data in learner.weights_payload().items():
        (tmp_path / name).write_bytes(data)
    sampler = DiffusionSampler(pipe, DIFFUSION)
    asyncio.run(sampler.update_weights(str(tmp_path), 1))
    torch.testing.assert_close(chain_logprob(sampler.policy, batch), chain_logprob(learner.policy, batch),
                               rtol=0, atol=1e-5)


def test_a_checkpoint_is_a_pipeline_and_training_continues_from_it_exactly(pipe, tmp_path):
    from diffusers import DDPMPipeline

    batch1, batch2 = sample_batch(pipe, seed=1), sample_batch(pipe, seed=2)
    learner = make_learner(pipe)
    learner.train_step(batch1)
    learner.write_checkpoint_shard(tmp_path / "ckpt")
    DDPMPipeline.from_pretrained(tmp_path / "ckpt" / "model")  # usable by diffusers on its own
    learner.train_step(batch2)

    resumed = make_learner(str(tmp_path / "ckpt" / "model"))
    resumed.load_training_state(tmp_path / "ckpt")
    resumed.train_step(batch2)
    assert resumed.weights_digest() == learner.weights_digest()


def test_lora_learners_train_and_ship_only_the_adapters(pipe):
    learner = make_learner(pipe, lora_rank=4)
    frozen = {k: v.clone() for k, v in learner.policy.unet.state_dict().items() if "lora_" not in k}
    learner.train_step(sample_batch(pipe))
    (payload,) = learner.weights_payload().values()
    from safetensors.torch import load

    shipped = load(payload)
    assert shipped and all("lora_" in k for k in shipped)
    now = learner.policy.unet.state_dict()
    assert all(torch.equal(now[k], v) for k, v in frozen.items())
