"""DDPO math: the DDIM step against diffusers, its log-probability, the loss and the stat tracker."""

import math

import numpy as np
import pytest
import torch

from areal.algos.ddpo import PerPromptStatTracker, ddim_step_with_logprob, ddpo_loss

diffusers = pytest.importorskip("diffusers")


def sd_scheduler(num_steps=10, **overrides):
    """Stable Diffusion 1.x's DDIM settings (ALGORITHMS.md §4)."""
    config = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    config.update(overrides)
    scheduler = diffusers.DDIMScheduler(**config)
    scheduler.set_timesteps(num_steps)
    return scheduler


def chain_inputs(seed, shape=(3, 4, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_prev_sample_equals_diffusers_step_with_the_same_noise(prediction_type, eta):
    scheduler = sd_scheduler(prediction_type=prediction_type)
    sample, eps = chain_inputs(0)
    for t in scheduler.timesteps:
        ours, _ = ddim_step_with_logprob(scheduler, eps, int(t), sample, eta=eta,
                                         generator=torch.Generator().manual_seed(int(t)))
        theirs = scheduler.step(eps, int(t), sample, eta=eta, generator=torch.Generator().manual_seed(int(t)))
        assert torch.allclose(ours, theirs.prev_sample, atol=1e-5, rtol=1e-5), f"t={int(t)}"


def test_clip_sample_is_honoured_like_diffusers():
    scheduler = sd_scheduler(clip_sample=True, clip_sample_range=1.0)
    sample, eps = chain_inputs(1)
    t = int(scheduler.timesteps[0])
    noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(5))
    ours, _ = ddim_step_with_logprob(scheduler, eps, t, sample, generator=torch.Generator().manual_seed(5))
    theirs = scheduler.step(eps, t, sample, eta=1.0, variance_noise=noise).prev_sample
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_log_prob_is_the_mean_gaussian_density_of_the_step():
    scheduler = sd_scheduler()
    sample, eps = chain_inputs(2, shape=(2, 1, 2, 2))
    t = int(scheduler.timesteps[3])
    prev, logp = ddim_step_with_logprob(scheduler, eps, t, sample, generator=torch.Generator().manual_seed(0))
    # re-derive in float64 from the formula
    abar = scheduler.alphas_cumprod.double()
    t_prev = t - 1000 // 10
    a_t, a_p = abar[t], abar[t_prev]
    s, e, x = sample.double(), eps.double(), prev.double()
    x0 = (s - (1 - a_t).sqrt() * e) / a_t.sqrt()
    sigma = ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)).sqrt()
    mu = a_p.sqrt() * x0 + (1 - a_p - sigma**2).sqrt() * e
    density = -((x - mu) ** 2) / (2 * sigma**2) - sigma.log() - math.log(math.sqrt(2 * math.pi))
    assert torch.allclose(logp.double(), density.mean(dim=(1, 2, 3)), atol=1e-4)


def test_re_evaluating_a_stored_chain_gives_the_same_log_probs():
    scheduler = sd_scheduler()
    x, _ = chain_inputs(3)
    g = torch.Generator().manual_seed(9)
    chain, logps = [x], []
    for t in scheduler.timesteps:
        eps = torch.tanh(chain[-1])  # a fixed "model"
        x, logp = ddim_step_with_logprob(scheduler, eps, int(t), chain[-1], generator=g)
        chain.append(x)
        logps.append(logp)
    for i, t in enumerate(scheduler.timesteps):
        _, again = ddim_step_with_logprob(scheduler, torch.tanh(chain[i]), int(t), chain[i], prev_sample=chain[i + 1])
        assert torch.allclose(again, logps[i], atol=1e-6)


def test_per_sample_timesteps_match_separate_calls():
    scheduler = sd_scheduler()
    sample, eps = chain_inputs(4)
    prev = torch.randn(sample.shape, generator=torch.Generator().manual_seed(1))
    ts = torch.tensor([int(scheduler.timesteps[i]) for i in (0, 4, 9)])
    _, batched = ddim_step_with_logprob(scheduler, eps, ts, sample, prev_sample=prev)
    for i, t in enumerate(ts.tolist()):
        _, single = ddim_step_with_logprob(scheduler, eps[i : i + 1], t, sample[i : i + 1], prev_sample=prev[i : i + 1])
        assert torch.allclose(batched[i], single[0], atol=1e-6)


def test_log_prob_is_highest_at_the_mean():
    scheduler = sd_scheduler()
    sample, eps = chain_inputs(5, shape=(1, 1, 4, 4))
    t = int(scheduler.timesteps[2])
    x, logp = ddim_step_with_logprob(scheduler, eps, t, sample, generator=torch.Generator().manual_seed(0))
    _, far = ddim_step_with_logprob(scheduler, eps, t, sample, prev_sample=x + 0.5)
    assert far.item() < logp.item()


def test_eta_zero_is_refused_with_the_fix():
    scheduler = sd_scheduler()
    sample, eps = chain_inputs(0)
    with pytest.raises(ValueError, match="eta must be > 0.*sampler.eta"):
        ddim_step_with_logprob(scheduler, eps, int(scheduler.timesteps[0]), sample, eta=0.0)


def test_set_alpha_to_one_last_step_is_refused():
    scheduler = sd_scheduler(set_alpha_to_one=True)
    sample, eps = chain_inputs(0)
    with pytest.raises(ValueError, match="set_alpha_to_one"):
        ddim_step_with_logprob(scheduler, eps, int(scheduler.timesteps[-1]), sample)


def test_ddpo_loss_hand_computed():
    new = torch.tensor([0.0, 1e-3, -1e-3], dtype=torch.float64)
    old = torch.zeros(3, dtype=torch.float64)
    adv = torch.tensor([1.0, 10.0, 1.0], dtype=torch.float64)  # 10 is clipped to 5
    loss, stats = ddpo_loss(new, old, adv, clip_range=1e-4)
    r1, r2 = math.exp(1e-3), math.exp(-1e-3)
    terms = [-1.0, max(-5 * r1, -5 * (1 + 1e-4)), max(-1 * r2, -1 * (1 - 1e-4))]
    assert loss.item() == pytest.approx(sum(terms) / 3)
    assert stats["approx_kl"].item() == pytest.approx(0.5 * (2e-6) / 3)
    assert stats["clip_fraction"].item() == pytest.approx(2 / 3)


def test_stat_tracker_uses_batch_stats_until_min_count():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=3)
    prompts = ["cat", "cat", "dog", "dog"]
    rewards = np.array([1.0, 3.0, 10.0, 20.0])
    adv = tracker.update(prompts, rewards)
    mean, std = rewards.mean(), rewards.std()  # population std over the whole batch
    assert adv.tolist() == pytest.approx(((rewards - mean) / (std + 1e-6)).tolist())
    adv = tracker.update(["cat"], [5.0])  # history [1, 3, 5] reaches min_count: per-prompt stats
    hist = np.array([1.0, 3.0, 5.0])
    assert adv.tolist() == pytest.approx([(5.0 - hist.mean()) / (hist.std() + 1e-6)])


def test_stat_tracker_keeps_only_the_last_buffer_size_rewards():
    tracker = PerPromptStatTracker(buffer_size=2, min_count=1)
    tracker.update(["p"] * 3, [100.0, 1.0, 2.0])
    adv = tracker.update(["p"], [3.0])  # history is [2, 3]
    assert adv.tolist() == pytest.approx([(3.0 - 2.5) / (0.5 + 1e-6)])
    restored = PerPromptStatTracker(buffer_size=2, min_count=1)
    restored.load_state_dict(tracker.state_dict())
    assert restored.state_dict() == {"p": [2.0, 3.0]}


def test_stat_tracker_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one reward per prompt"):
        PerPromptStatTracker(4, 2).update(["a", "b"], [1.0])
