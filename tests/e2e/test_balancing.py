"""The balancer changes the rollout fleet while the run goes on: a worker is added when the learner starves
and retired when generation runs ahead, and no prompt is lost either way."""

import json

import pytest

pytestmark = pytest.mark.slow

COMMON = ["experiment=ci_tiny", "eval_every=0", "logging.tensorboard=false", "logging.wandb_mode=disabled"]


def run(tmp_path, *overrides):
    from launch.config_loader import load_config
    from launch.train import train

    cfg, resolved = load_config([*COMMON, f"out_dir={tmp_path}", *overrides])
    summary = train(cfg, resolved)
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    timeline = [json.loads(line) for line in (tmp_path / "timeline.jsonl").read_text().splitlines()]
    assert summary["ledger"]["unaccounted"] == 0 and summary["duplicate_trained_tickets"] == 0
    assert summary["ledger"]["trained"] == cfg.total_steps * cfg.batch_size
    return summary, [s for s in steps if "learner/loss" in s], timeline


def test_a_starving_learner_gets_another_rollout_worker(ray_session, tmp_path):
    # one group at a time, each at least ~48 tokens long: generation cannot keep up with the learner. 14 steps
    # last about as long as the added worker's start-up, which the run's shutdown would wait for anyway (close()
    # queues behind it, up to 30 s): fewer would save little, and these let it join on an idle machine.
    summary, steps, timeline = run(tmp_path, "total_steps=14", "controller.scale_cooldown_s=0",
                                   "rollout.max_concurrent=1", "rollout.max_new_tokens=64",
                                   "rollout.length_tail_median=48", "rollout.length_tail_sigma=0.1",
                                   "rollout.max_workers=2")
    assert steps[0]["learner/idle_fraction"] > 0.1
    assert summary["rollout_workers"] + summary["rollout_workers_starting"] == 2
    # a worker serving through a whole step window gets rollouts (generation is the bottleneck): its busy
    # spans are in the timeline. One that joined in the last step or during the final evaluation may have none.
    if any(s["rollout/workers"] == 2 for s in steps[:-1]):
        assert any(row["actor"] == "rollout-1" for row in timeline)


def test_rollout_workers_that_run_ahead_are_retired(ray_session, tmp_path):
    # two workers generate far faster than a learner taking 4 optimizer steps per batch: they wait at the gate.
    # The first scaling decision is never held back by the cooldown; a long one then keeps the balancer from
    # adding a worker back in the last steps (one still starting when the run ends holds up its shutdown).
    summary, steps, timeline = run(tmp_path, "total_steps=6", "controller.scale_cooldown_s=600", "batch_size=16",
                                   "learner.minibatches=4", "rollout.workers=2", "rollout.min_workers=1")
    workers = [s["rollout/workers"] for s in steps]
    assert workers[0] == 2.0 and 1.0 in workers  # one worker was drained and shut down while the run went on
    assert {row["actor"] for row in timeline} >= {"rollout-0", "rollout-1"}
