"""ThroughputBalancer: sets the in-flight limit from Little's law (learner rate x group latency), corrects it
when the learner starves or a whole batch waits, scales workers within the budget; LeastLoaded picks in
O(log n) among changing workers."""

import pytest

from areal.balancer import StepObservation, ThroughputBalancer
from areal.worker_pool import LeastLoaded


def balancer(now, **kw):
    args = dict(min_in_flight=1, max_in_flight=32, min_workers=1, max_workers=3, target_idle=0.1, smoothing=1.0,
                cooldown_s=10.0, clock=lambda: now[0])
    args.update(kw)
    return ThroughputBalancer(**args)


def obs(learner=0.0, rollout=0.0, backlog=0, latency=0.25, limit_bound=True, gate_bound=False, workers=1,
        starting=0):
    # B = 16 groups trained in 0.5 s: the learner consumes 32 groups/s when fed
    return StepObservation(learner, rollout, backlog, 16, 0.5, latency, limit_bound, gate_bound, workers, starting)


def test_the_limit_is_what_keeps_the_learner_fed_by_littles_law():
    b = balancer([0.0])
    assert b.limit == 32  # no measurement yet: as an unbalanced run
    decision = b.on_step(obs(latency=0.25, backlog=8))  # half a batch waiting: the level term is neutral
    assert decision.in_flight_limit == 9 and decision.reason == "balanced"  # ceil(32/s * 0.25 s * 1.1)
    assert b.on_step(obs(latency=0.5, backlog=8)).in_flight_limit == 18  # slower groups need more in flight
    assert b.on_step(obs(latency=None, backlog=8)).in_flight_limit == 18  # no group finished: keep the estimate
    assert b.on_step(obs(latency=0.5, backlog=0)).in_flight_limit == 22  # an empty buffer asks for more now
    assert b.on_step(obs(latency=0.5, backlog=12)).in_flight_limit == 16  # a fuller one for less


def test_a_starving_learner_raises_the_limit_then_adds_one_worker_at_a_time():
    now = [100.0]
    b = balancer(now)
    limits = [b.on_step(obs(learner=0.3)).in_flight_limit for _ in range(3)]
    assert limits == sorted(limits) and limits[0] > 9
    while b.limit < 32:
        decision = b.on_step(obs(learner=0.3))
    assert decision.add_workers == 1
    assert b.on_step(obs(learner=0.3, starting=1)).add_workers == 0  # one start at a time
    now[0] += 11
    assert b.on_step(obs(learner=0.3, workers=2)).add_workers == 1
    now[0] += 11
    assert b.on_step(obs(learner=0.3, workers=3)).add_workers == 0  # the budget's maximum


def test_a_starving_learner_adds_a_worker_when_the_limit_is_not_what_holds_generation_back():
    b = balancer([0.0])
    assert b.on_step(obs(learner=0.3, limit_bound=False)).add_workers == 1


def test_a_waiting_batch_lowers_the_limit_to_one_per_worker_and_idle_rollouts_lose_a_worker():
    now = [100.0]
    b = balancer(now)
    decisions = [b.on_step(obs(rollout=0.4, backlog=16, latency=0.1, workers=2)) for _ in range(12)]
    limits = [d.in_flight_limit for d in decisions]
    assert limits == sorted(limits, reverse=True) and limits[-1] == 2  # floor: one rollout per worker
    assert [d.add_workers for d in decisions] == [-1] + [0] * 11  # one retirement, then the cooldown
    now[0] += 11
    assert b.on_step(obs(rollout=0.4, backlog=16, latency=0.1, workers=1)).add_workers == 0  # min_workers
    # idle rollouts with nothing waiting and no gate in the way are not spare capacity
    now[0] += 11
    assert b.on_step(obs(rollout=0.4, backlog=0, latency=0.1, workers=2)).add_workers == 0


def test_a_backlog_that_is_already_draining_is_not_cut_further():
    b = balancer([0.0])
    b.on_step(obs(backlog=48))
    gain = b.gain
    for backlog in (40, 32, 24):  # generation runs slower than training already: the backlog shrinks
        b.on_step(obs(backlog=backlog))
    assert b.gain == gain
    b.on_step(obs(backlog=24))  # stopped shrinking while a whole batch still waits
    assert b.gain < gain


def test_rollouts_held_back_by_the_staleness_gate_while_the_learner_is_fed_lose_a_worker():
    now = [0.0]
    b = balancer(now)
    assert b.on_step(obs(rollout=0.5, limit_bound=False, gate_bound=True, workers=2)).add_workers == -1
    now[0] += 11
    assert b.on_step(obs(rollout=0.5, limit_bound=False, gate_bound=True, workers=1)).add_workers == 0
    # the same idle rollouts with a starving learner are the synchronous pattern: nothing to retire
    assert b.on_step(obs(learner=0.5, rollout=0.5, limit_bound=False, gate_bound=True, workers=2)).add_workers >= 0


def test_a_balanced_pipeline_is_left_alone():
    b = balancer([0.0])
    first = b.on_step(obs(learner=0.05, rollout=0.05, backlog=3))
    assert [b.on_step(obs(learner=0.05, rollout=0.05, backlog=3)) for _ in range(5)] == [first] * 5


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
