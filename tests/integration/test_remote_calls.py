"""A Ray call that hangs fails at its deadline with an error naming the actor, the call and the setting."""

import time

import pytest


def test_a_hung_call_names_the_actor_the_call_and_the_setting(ray_session):
    import ray

    from actors.remote_calls import RemoteCallTimeout, wait_all

    @ray.remote(num_cpus=0)
    class Sleeper:
        def nap(self, seconds: float) -> float:
            time.sleep(seconds)
            return seconds

    quick, stuck = Sleeper.remote(), Sleeper.remote()
    # both actors up first: on a loaded machine starting one can take longer than the 1 s deadline below
    assert ray.get([quick.nap.remote(0.0), stuck.nap.remote(0.0)], timeout=120) == [0.0, 0.0]
    start = time.monotonic()
    with pytest.raises(RemoteCallTimeout) as err:
        wait_all([quick.nap.remote(0.0), stuck.nap.remote(30.0)], 1.0, "load_weights(version 3)",
                 "rollout.weight_sync_timeout_s", ["RolloutActor 0", "RolloutActor 1"])
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "RolloutActor 1" in message and "RolloutActor 0" not in message
    assert "load_weights(version 3)" in message and "rollout.weight_sync_timeout_s=1.0" in message
    assert err.value.pending == [1]
    assert wait_all([quick.nap.remote(0.0)], 30, "nap", "x") == [0.0]
    for actor in (quick, stuck):
        ray.kill(actor)


def test_the_run_summary_survives_a_rollout_worker_that_never_answers(ray_session):
    import ray

    from actors.rollout_fleet import RolloutFleet
    from areal.config import TrainConfig

    @ray.remote(num_cpus=0)
    class Engine:
        def __init__(self, version: int, hang: bool):
            self.version, self.hang = version, hang

        def stats(self) -> dict:
            if self.hang:
                time.sleep(30)
            return {"version": self.version}

    fleet = RolloutFleet(TrainConfig(), "unused", use_gpu=False, tag="test")
    fleet.actors = {0: Engine.remote(7, hang=False), 1: Engine.remote(7, hang=True)}
    for worker in fleet.actors:
        fleet.pool.add(worker)
    start = time.monotonic()
    assert fleet.engine_versions(timeout_s=2.0) == [7]  # the hung one is logged and left out
    assert time.monotonic() - start < 15
    for actor in fleet.actors.values():
        ray.kill(actor)
