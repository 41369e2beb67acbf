"""RolloutController: every prompt accounted for; stale groups retried, flat groups dropped, FIFO batches."""

import pytest

from areal.controller import RolloutController
from areal.staleness import StalenessGate
from areal.timeline import BusyTracker
from areal.types import Trajectory, TrajectoryGroup


def group(pid, rewards, version):
    trajs = tuple(Trajectory((1,), (2,), (-0.1,), (version,), r) for r in rewards)
    return TrajectoryGroup(pid, trajs, submit_version=version)


def test_submission_stops_at_capacity_and_epochs_cover_every_prompt():
    ctl = RolloutController(StalenessGate(2, 1, 100), num_prompts=3, filter_zero_variance=False, seed=1)
    first = [ctl.next_prompt() for _ in range(4)]
    assert ctl.next_prompt() is None  # (eta + v + 1) * B = 4 in flight
    assert sorted(first[:3]) == [0, 1, 2]  # one epoch is a permutation


def test_stale_groups_are_retried_and_flat_groups_dropped():
    ctl = RolloutController(StalenessGate(1, 0, 10), num_prompts=5, filter_zero_variance=True)
    a = ctl.next_prompt()
    assert ctl.on_group(a, group("a", [1.0, 1.0], 0)) == "filtered"
    b = ctl.next_prompt()
    assert ctl.on_group(b, group("b", [1.0, 0.0], 0)) == "accepted"
    ctl.on_trained(1)
    c = ctl.next_prompt()
    # a group submitted at v0 finishing when the next batch trains at v1 is too stale for eta = 0
    assert ctl.on_group(c, group("c", [0.0, 1.0], 0)) == "stale"
    assert ctl.next_prompt() == c  # retried first
    assert dict(ctl.outcomes) == {"filtered": 1, "accepted": 1, "stale": 1}


def test_batches_are_fifo_and_state_round_trips():
    ctl = RolloutController(StalenessGate(2, 2, 10), num_prompts=8, filter_zero_variance=False, seed=3)
    ids = [ctl.next_prompt() for _ in range(3)]
    for i, idx in enumerate(ids):
        ctl.on_group(idx, group(f"g{i}", [0.0, 1.0], 0))
    assert [g.prompt_id for g in ctl.take_batch()] == ["g0", "g1"]
    assert ctl.take_batch() is None
    restored = RolloutController(StalenessGate(2, 2, 10), num_prompts=8, filter_zero_variance=False, seed=3)
    restored.load_state_dict(ctl.state_dict())
    assert restored.next_prompt() == ctl.next_prompt()


def test_a_checkpoint_without_samples_requeues_buffered_and_in_flight_prompts():
    ctl = RolloutController(StalenessGate(2, 2, 10), num_prompts=8, filter_zero_variance=False, seed=3)
    ids = [ctl.next_prompt() for _ in range(5)]
    for i, idx in enumerate(ids[:3]):
        ctl.on_group(idx, group(f"g{i}", [0.0, 1.0], 0))
    ctl.take_batch()  # ids[0], ids[1] trained; ids[2] buffered; ids[3], ids[4] in flight
    state = ctl.requeued_state_dict(in_flight=[ids[3], ids[4]])
    restored = RolloutController(StalenessGate(2, 2, 10), num_prompts=8, filter_zero_variance=False, seed=3)
    restored.load_state_dict(state)
    restored.gate.restore(1)
    assert [restored.next_prompt() for _ in range(3)] == ids[2:5]  # then the epoch continues where it was
    assert restored.next_prompt() == ctl.next_prompt()


def test_failure_returns_the_slot_and_retries_the_prompt():
    ctl = RolloutController(StalenessGate(1, 0, 1), num_prompts=3, filter_zero_variance=False)
    idx = ctl.next_prompt()
    assert ctl.next_prompt() is None
    ctl.on_failure(idx)
    assert ctl.next_prompt() == idx


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
