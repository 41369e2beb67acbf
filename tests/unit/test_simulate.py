"""The discrete-event simulation drives the real controller policy: it loses nothing, respects the staleness
bound, shows asynchronous RL beating synchronous on long-tailed outputs, and the balancer trading a little
throughput for fresher samples when the learner is the bottleneck."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.simulate import REGIMES, measure  # noqa: E402


@pytest.fixture(scope="module")
def runs():
    out = {}
    for regime, rate in REGIMES.items():
        for name, eta, balance in (("sync", 0, False), ("async", 4, False), ("balanced", 4, True)):
            out[regime, name] = measure(8, eta, balance, steps=24, warmup=8, seed=0, learner_rate=rate)
    return out


def test_every_prompt_is_accounted_for_and_the_staleness_bound_holds(runs):
    for (regime, name), run in runs.items():
        assert run["unaccounted"] == 0, (regime, name)
        assert run["max_staleness_trained"] <= (0 if name == "sync" else 4), (regime, name)


def test_asynchronous_rl_outruns_synchronous_rl_on_long_tailed_outputs(runs):
    for regime in REGIMES:
        assert runs[regime, "async"]["tokens_per_s"] > 1.5 * runs[regime, "sync"]["tokens_per_s"]
        assert runs[regime, "async"]["learner_idle"] < runs[regime, "sync"]["learner_idle"]


def test_with_a_learner_bottleneck_the_balancer_keeps_rollouts_busy_on_fresher_samples(runs):
    plain, balanced = runs["learner-bound", "async"], runs["learner-bound", "balanced"]
    assert plain["rollout_idle"] > 0.03  # unbalanced generation runs ahead and waits at the gate
    assert balanced["rollout_idle"] < plain["rollout_idle"]
    assert balanced["staleness"] < plain["staleness"] - 0.5
    assert balanced["tokens_per_s"] > 0.85 * plain["tokens_per_s"]
