"""ThroughputBalancer: lowers the in-flight limit while rollouts idle, raises it (then adds workers) while the
learner starves, leaves a balanced pipeline alone; LeastLoaded picks in O(log n) among changing workers."""

import pytest

from areal.balancer import StepObservation, ThroughputBalancer
from areal.worker_pool import LeastLoaded


def balancer(now, **kw):
    args = dict(min_in_flight=1, max_in_flight=32, min_workers=1, max_workers=3, target_idle=0.1, smoothing=1.0,
                cooldown_s=10.0, clock=lambda: now[0])
    args.update(kw)
    return ThroughputBalancer(**args)


def obs(learner, rollout, limit_bound=True, workers=1, starting=0):
    return StepObservation(learner, rollout, limit_bound, workers, starting)


def test_idle_rollouts_lower_the_limit_down_to_one_per_worker_then_retire_a_worker():
    now = [100.0]
    b = balancer(now)
    decisions = [b.on_step(obs(0.02, 0.5, workers=2)) for _ in range(12)]
    limits = [d.in_flight_limit for d in decisions]
    assert limits[0] == 24 and limits == sorted(limits, reverse=True) and limits[-1] == 2
    # workers are retired only once the limit is at its floor, one at a time
    assert [d.add_workers for d in decisions if d.add_workers] == [-1]
    assert decisions[limits.index(2) + 1].add_workers == -1
    now[0] += 11
    assert b.on_step(obs(0.02, 0.5, workers=1)).add_workers == 0  # the floor is one worker


def test_a_starving_learner_raises_the_limit_and_adds_workers_only_when_the_limit_is_not_binding():
    now = [100.0]
    b = balancer(now)
    b.limit = 8
    assert b.on_step(obs(0.4, 0.0, limit_bound=True)).in_flight_limit == 10
    grow = b.on_step(obs(0.4, 0.0, limit_bound=False))
    assert grow.add_workers == 1 and grow.in_flight_limit == 10
    assert b.on_step(obs(0.4, 0.0, limit_bound=False, starting=1)).add_workers == 0  # one start at a time
    now[0] += 11
    assert b.on_step(obs(0.4, 0.0, limit_bound=False, workers=2)).add_workers == 1
    now[0] += 11
    assert b.on_step(obs(0.4, 0.0, limit_bound=False, workers=3)).add_workers == 0  # the budget's maximum


def test_a_balanced_pipeline_and_a_serialised_one_are_left_alone():
    now = [0.0]
    b = balancer(now)
    assert b.on_step(obs(0.05, 0.05)) .reason == "balanced"
    both = b.on_step(obs(0.5, 0.5))
    assert both.in_flight_limit == 32 and both.add_workers == 0 and "max_staleness" in both.reason


def test_observations_are_smoothed():
    now = [0.0]
    b = balancer(now, smoothing=0.5)
    b.on_step(obs(0.0, 0.0))
    assert b.on_step(obs(0.0, 0.15)).reason == "balanced"  # one noisy step (smoothed 0.075) changes nothing
    assert b.on_step(obs(0.0, 0.15)).in_flight_limit < 32


def test_bad_budgets_are_refused():
    with pytest.raises(ValueError, match="min_workers"):
        ThroughputBalancer(1, 8, 3, 2)
    with pytest.raises(ValueError, match="min_in_flight"):
        ThroughputBalancer(9, 8, 1, 2)


def test_least_loaded_picks_the_emptiest_serving_worker_and_skips_drained_ones():
    pool = LeastLoaded()
    for w in range(3):
        pool.add(w)
    assert [pool.pick() for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    pool.release(1)
    assert pool.pick() == 1
    pool.drain(1)
    pool.release(0)
    pool.release(0)
    assert pool.pick() == 0 and pool.least_loaded() == 0
    pool.release(1)
    assert pool.load[1] == 1 and 1 not in pool.serving  # a draining worker still counts its rollouts
    pool.remove(0)
    assert pool.pick() == 2
    pool.remove(2)
    with pytest.raises(RuntimeError, match="no rollout worker"):
        pool.pick()


def test_least_loaded_stays_small_over_many_changes():
    pool = LeastLoaded()
    for w in range(64):
        pool.add(w)
    for i in range(20000):
        w = pool.pick()
        if i % 3:
            pool.release(w)
    assert len(pool._heap) <= 4 * 64 + 64
    loads = [pool.load[w] for w in range(64)]
    assert max(loads) - min(loads) <= 1
