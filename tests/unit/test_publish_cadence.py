"""When the driver ships a new version to the engines (rollout.sync_every)."""

from actors.driver import publish_due
from launch.config_loader import load_config


def cadence(*overrides: str) -> list[int]:
    """The versions published over a run in which the engines start at version 0."""
    cfg, _ = load_config(["experiment=arith_tiny", *overrides])
    last_sent, shipped = 0, []
    for version in range(1, cfg.total_steps + 1):
        if publish_due(version, last_sent, cfg):
            last_sent = version
            shipped.append(version)
    return shipped


def test_every_version_is_published_by_default():
    assert cadence("total_steps=5", "eval_every=0", "rollout.sync_every=1") == [1, 2, 3, 4, 5]


def test_every_kth_version_is_published_and_the_last_always():
    assert cadence("total_steps=7", "eval_every=0", "rollout.sync_every=3") == [3, 6, 7]


def test_an_evaluation_sees_the_newest_weights_and_restarts_the_count():
    assert cadence("total_steps=10", "eval_every=5", "rollout.sync_every=3") == [3, 5, 8, 10]


def test_engines_never_lag_further_than_the_staleness_bound():
    assert cadence("total_steps=6", "eval_every=0", "rollout.sync_every=4", "algo.max_staleness=2") == [2, 4, 6]
    assert cadence("total_steps=3", "eval_every=0", "rollout.sync_every=4", "algo.max_staleness=0") == [1, 2, 3]


def test_deterministic_runs_sync_every_version():
    assert cadence("total_steps=3", "eval_every=0", "rollout.sync_every=2", "controller.deterministic=true") == \
        [1, 2, 3]
