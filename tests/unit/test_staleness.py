"""StalenessGate: the capacity rule, the freshness check and the staleness invariant (ALGORITHMS.md §1)."""

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from areal.staleness import StalenessGate


def test_capacity_follows_the_formula_and_can_go_negative():
    gate = StalenessGate(batch_size=4, max_staleness=1, max_concurrent=10)
    assert gate.capacity() == min(10 - 0, (1 + 0 + 1) * 4 - 0) == 8
    for _ in range(8):
        gate.on_submit()
    assert gate.capacity() == 0
    gate.on_submit()  # the gate counts, it never refuses
    assert gate.capacity() == -1
    assert gate.submitted == 9 and gate.running == 9


def test_capacity_is_bounded_by_max_concurrent():
    gate = StalenessGate(batch_size=100, max_staleness=4, max_concurrent=3)
    gate.on_submit()
    assert gate.capacity() == 2


def test_synchronous_gate_admits_exactly_one_batch_per_version():
    gate = StalenessGate(batch_size=2, max_staleness=0, max_concurrent=64)
    gate.on_submit(); gate.on_submit()
    assert gate.capacity() == 0
    gate.on_accept(); gate.on_accept()
    assert gate.capacity() == 0  # the batch waits in the buffer until the trainer moves on
    gate.set_version(1)
    assert gate.capacity() == 2


def test_rejection_gives_the_slot_back():
    gate = StalenessGate(batch_size=1, max_staleness=0, max_concurrent=8)
    gate.on_submit()
    assert gate.capacity() == 0
    gate.on_reject()
    assert gate.capacity() == 1
    assert (gate.accepted, gate.rejected, gate.running) == (0, 1, 0)


def test_out_of_order_finish_is_caught_by_is_fresh():
    # B=1, eta=1: T starts at v0, U and W overtake it and advance the version to 2.
    gate = StalenessGate(batch_size=1, max_staleness=1, max_concurrent=8)
    gate.on_submit(); gate.on_submit()  # T, U at v0
    assert gate.is_fresh(0)
    gate.on_accept()  # U
    gate.set_version(1)
    gate.on_submit(); gate.on_accept()  # W at v1
    gate.set_version(2)
    # T would be trained in the update producing v3 (v = 2): started at 0 < 2 - 1.
    assert gate.next_train_version() == 2
    assert gate.staleness_if_accepted(0) == 2
    assert not gate.is_fresh(0)


def test_finish_without_submit_is_an_error_naming_both_counters():
    gate = StalenessGate(batch_size=1, max_staleness=0, max_concurrent=1)
    with pytest.raises(RuntimeError, match="running=0"):
        gate.on_accept()


def test_version_never_goes_backwards():
    gate = StalenessGate(batch_size=1, max_staleness=0, max_concurrent=1)
    gate.set_version(3)
    with pytest.raises(ValueError, match="current 3, got 2"):
        gate.set_version(2)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(batch_size=0, max_staleness=0, max_concurrent=1), "batch_size"),
        (dict(batch_size=1, max_staleness=-1, max_concurrent=1), "max_staleness"),
        (dict(batch_size=1, max_staleness=0, max_concurrent=0), "max_concurrent"),
    ],
)
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        StalenessGate(**kwargs)


def test_restore_restarts_accepted_at_version_times_batch():
    gate = StalenessGate(batch_size=3, max_staleness=2, max_concurrent=100)
    for _ in range(7):
        gate.on_submit()
    gate.restore(version=2)
    assert (gate.version, gate.accepted, gate.running) == (2, 6, 0)
    assert gate.capacity() == (2 + 2 + 1) * 3 - 6
    gate.restore(version=2, buffered=2)
    assert gate.accepted == 8


def test_state_dict_round_trip_and_config_mismatch():
    gate = StalenessGate(batch_size=2, max_staleness=1, max_concurrent=5)
    gate.on_submit(); gate.on_submit(); gate.on_accept(); gate.set_version(1)
    other = StalenessGate(batch_size=2, max_staleness=1, max_concurrent=5)
    other.load_state_dict(gate.state_dict())
    assert other.state_dict() == gate.state_dict()
    assert other.capacity() == gate.capacity()
    wrong = StalenessGate(batch_size=4, max_staleness=1, max_concurrent=5)
    with pytest.raises(ValueError, match="batch_size in the checkpoint is 2"):
        wrong.load_state_dict(gate.state_dict())


def test_metrics_are_namespaced():
    gate = StalenessGate(batch_size=2, max_staleness=1, max_concurrent=5)
    assert all(k.startswith("staleness/") for k in gate.metrics())


OPS = st.lists(
    st.tuples(st.sampled_from(["submit"] * 5 + ["finish"] * 5 + ["train"] * 4 + ["restore"]), st.integers(0, 2), st.booleans()),
    min_size=20,
    max_size=200,
)


@settings(max_examples=500, deadline=None)
@given(
    batch_size=st.integers(1, 5),
    eta=st.integers(0, 3),
    max_concurrent=st.integers(1, 12),
    ops=OPS,
)
def test_no_trained_unit_exceeds_the_staleness_bound(batch_size, eta, max_concurrent, ops):
    """Over any interleaving, the update producing v+1 trains only units started at >= v - eta."""
    gate = StalenessGate(batch_size, eta, max_concurrent)
    running: list[int] = []  # start versions of in-flight units, in any finish order
    buffer: deque[int] = deque()  # accepted units, trained first-in first-out
    checkpoint_version, saved_buffer = 0, []  # what the last checkpoint holds
    for op, pick, keep in ops:
        if op == "submit" and gate.capacity() > 0:
            gate.on_submit()
            running.append(gate.version)
            assert gate.running <= max_concurrent
        elif op == "finish" and running:
            # mostly the newest finishes first, so long generations get overtaken
            start = running.pop(len(running) - 1 - pick % len(running))
            if keep and gate.is_fresh(start):  # keep=False models a dynamic filter
                gate.on_accept()
                buffer.append(start)
            else:
                gate.on_reject()
        elif op == "train" and len(buffer) >= batch_size:
            v = gate.version
            batch = [buffer.popleft() for _ in range(batch_size)]
            assert min(batch) >= v - eta, f"trained a unit from v{min(batch)} in update {v}->{v + 1} (eta={eta})"
            gate.set_version(v + 1)
            if keep:
                checkpoint_version, saved_buffer = gate.version, list(buffer)
        elif op == "restore":
            running.clear()  # in-flight prompts are re-queued, not resumed
            buffer = deque(saved_buffer)
            gate.restore(checkpoint_version, buffered=len(buffer))
            assert gate.accepted == checkpoint_version * batch_size + len(buffer)
        assert gate.accepted + gate.rejected + gate.running <= gate.submitted
