"""Configs: typed, composed by Hydra, and rejected before any actor starts with the key named."""

import pytest

from areal.config import TrainConfig
from launch.config_loader import ConfigError, load_config


def test_the_demo_preset_composes_into_typed_dataclasses():
    cfg, resolved = load_config(["experiment=arith_tiny", "rollout.workers=2", "algo.max_staleness=4"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.rollout.workers == 2 and cfg.algo.max_staleness == 4
    assert "samples_per_prompt" in resolved


@pytest.mark.parametrize(
    "override, named",
    [
        ("rollout.workers=abc", "rollout.workers"),
        ("rollout.wrokers=2", "wrokers"),
        ("algo.max_staleness=-1", "algo.max_staleness"),
        ("algo.advantage=ppo9", "algo.advantage"),
        ("learner.zero_stage=5", "learner.zero_stage"),
        ("rollout.max_new_tokens=999", "rollout.max_new_tokens"),
        ("experiment=nope", "experiment/nope"),
        ("task.type=gsm8k", "task.path"),
    ],
)
def test_bad_values_fail_at_load_naming_the_field(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config([override])
