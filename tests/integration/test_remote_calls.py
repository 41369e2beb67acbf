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
