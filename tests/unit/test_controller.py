"""RolloutController: every prompt accounted for; tickets resolve once; stale groups retried, flat groups
dropped; FIFO batches; a saved state continues exactly."""

import json
import random

import pytest

from areal.controller import RolloutController, sampling_seed
from areal.staleness import StalenessGate
from areal.timeline import BusyTracker
from areal.types import Trajectory, TrajectoryGroup


def group(pid, rewards, version):
    trajs = tuple(Trajectory((1,), (2,), (-0.1,), (version,), r) for r in rewards)
    return TrajectoryGroup(pid, trajs, submit_version=version)


def controller(batch=2, eta=1, concurrent=100, prompts=3, seed=1, filter_flat=False):
    return RolloutController(StalenessGate(batch, eta, concurrent), num_prompts=prompts,
                             filter_zero_variance=filter_flat, seed=seed)


def test_submission_stops_at_capacity_and_epochs_cover_every_prompt():
    ctl = controller()
    first = [ctl.next_rollout() for _ in range(4)]
    assert ctl.next_rollout() is None  # (eta + v + 1) * B = 4 in flight
    assert sorted(r.prompt for r in first[:3]) == [0, 1, 2]  # one epoch is a permutation
    assert [r.ticket for r in first] == [0, 1, 2, 3]
    assert ctl.blocked["gate"] == 1


def test_the_balancers_limit_caps_rollouts_in_flight_below_the_gate():
    ctl = controller(eta=4)
    ctl.in_flight_limit = 2
    assert ctl.next_rollout() and ctl.next_rollout() and ctl.next_rollout() is None
    assert ctl.blocked["limit"] == 1


def test_sampling_seeds_depend_on_run_seed_and_ticket_only():
    a, b = controller(seed=5), controller(seed=5)
    assert [a.next_rollout().seed for _ in range(3)] == [b.next_rollout().seed for _ in range(3)]
    assert sampling_seed(5, 0) != sampling_seed(6, 0) and 0 <= sampling_seed(5, 0) < 2**31


def test_stale_groups_are_retried_and_flat_groups_dropped():
    ctl = controller(batch=1, eta=0, concurrent=10, prompts=5, filter_flat=True)
    a = ctl.next_rollout()
    assert ctl.on_group(a.ticket, group("a", [1.0, 1.0], 0)) == "filtered"
    b = ctl.next_rollout()
    assert ctl.on_group(b.ticket, group("b", [1.0, 0.0], 0)) == "accepted"
    ctl.on_trained(1)
    c = ctl.next_rollout()
    # a group submitted at v0 finishing when the next batch trains at v1 is too stale for eta = 0
    assert ctl.on_group(c.ticket, group("c", [0.0, 1.0], 0)) == "stale"
    assert ctl.next_rollout().prompt == c.prompt  # retried first
    assert dict(ctl.outcomes) == {"filtered": 1, "accepted": 1, "stale": 1}


def test_a_ticket_resolves_once():
    ctl = controller(batch=1, eta=0, concurrent=1)
    r = ctl.next_rollout()
    assert ctl.next_rollout() is None
    assert ctl.on_failure(r.ticket) is True
    assert ctl.on_failure(r.ticket) is False  # a second report of the same failure changes nothing
    assert ctl.on_group(r.ticket, group("late", [0.0, 1.0], 0)) == "ignored"  # nor does a late result
    again = ctl.next_rollout()
    assert again.prompt == r.prompt and again.ticket != r.ticket
    assert ctl.unaccounted() == 0 and len(ctl.buffer) == 0


def test_random_failures_lose_no_prompt_and_count_none_twice():
    rng = random.Random(0)
    ctl = controller(batch=4, eta=2, concurrent=12, prompts=7, filter_flat=True)
    version, trained = 0, []
    for _ in range(3000):
        while ctl.next_rollout() is not None:
            pass
        ticket = rng.choice(list(ctl.in_flight))
        roll = rng.random()
        if roll < 0.2:
            ctl.on_failure(ticket)
            ctl.on_failure(ticket)  # the same failure seen twice (e.g. every call of a dead worker)
        else:
            rewards = [0.0, 0.0] if roll < 0.3 else [0.0, 1.0]
            ctl.on_group(ticket, group(str(ticket), rewards, version - rng.choice([0, 0, 1, 3])))
            if rng.random() < 0.1:
                assert ctl.on_group(ticket, group(str(ticket), rewards, version)) == "ignored"
        if (batch := ctl.take_batch()) is not None:
            trained += [g.prompt_id for g in batch]
            version += 1
            ctl.on_trained(version)
        assert ctl.unaccounted() == 0
    assert len(trained) == len(set(trained)) == ctl.outcomes["trained"] > 1000
    ledger = ctl.ledger()
    assert ledger["drawn"] == (ledger["trained"] + ledger["filtered"] + ledger["buffered"] + ledger["in_flight"]
                               + ledger["queued"])


def test_batches_are_fifo_and_state_round_trips_through_json():
    ctl = controller(batch=2, eta=2, concurrent=10, prompts=8, seed=3)
    rollouts = [ctl.next_rollout() for _ in range(3)]
    for i, r in enumerate(rollouts):
        ctl.on_group(r.ticket, group(f"g{i}", [0.0, 1.0 + i / 3], 0))
    assert [g.prompt_id for g in ctl.take_batch()] == ["g0", "g1"]
    assert ctl.take_batch() is None
    in_flight = [ctl.next_rollout() for _ in range(2)]
    state = json.loads(json.dumps(ctl.state_dict()))
    restored = controller(batch=2, eta=2, concurrent=10, prompts=8, seed=3)
    restored.load_state_dict(state, version=1)
    assert list(restored.buffer) == list(ctl.buffer)  # the buffered sample survives, floats exact
    assert restored.buffer[0].rewards == [0.0, 1.0 + 2 / 3]
    # prompts in flight at save time come first, then the epoch continues where it was
    assert [restored.next_rollout().prompt for _ in range(2)] == [r.prompt for r in in_flight]
    for _ in range(2):
        ctl.on_failure(next(iter(ctl.in_flight)))
        ctl.next_rollout()
    nxt, nxt_restored = ctl.next_rollout(), restored.next_rollout()
    assert nxt.prompt == nxt_restored.prompt
    assert restored.gate.accepted == 1 * 2 + 1 and restored.gate.running == 3
    assert restored.unaccounted() == 0


def test_busy_tracker_counts_overlaps_once():
    now = [0.0]
    tracker = BusyTracker(clock=lambda: now[0])
    tracker.start(); now[0] = 1.0
    tracker.start(); now[0] = 2.0
    tracker.end(); now[0] = 3.0
    tracker.end(); now[0] = 5.0
    assert tracker.intervals == [(0.0, 3.0)]
    assert tracker.busy_seconds() == 3.0
    assert tracker.idle_fraction() == pytest.approx(0.4)
    assert tracker.idle_fraction(since=3.0) == 1.0
    with pytest.raises(RuntimeError):
        tracker.end()


def test_a_run_that_accepts_nothing_is_stalled_and_told_why():
    from areal.controller import stall_message

    ctl = controller(eta=10, filter_flat=True)
    for _ in range(5):  # every sample scored the same (e.g. a reward that always fails to 0.0)
        r = ctl.next_rollout()
        ctl.on_group(r.ticket, group("p", [0.0, 0.0], 0))
    r = ctl.next_rollout()
    ctl.on_failure(r.ticket)
    assert not ctl.stalled(7) and ctl.stalled(6) and not ctl.stalled(0)
    message = stall_message(ctl.since_accepted, 6, 12, "ModuleNotFoundError: No module named 'math_verify'")
    assert "5 filtered" in message and "1 failed" in message and "controller.max_unaccepted_groups=6" in message
    assert "algo.filter_zero_variance=false" in message and "math_verify" in message
    r = ctl.next_rollout()
    ctl.on_group(r.ticket, group("p", [0.0, 1.0], 0))  # one accepted group resets the count
    assert not ctl.stalled(1) and not ctl.since_accepted
