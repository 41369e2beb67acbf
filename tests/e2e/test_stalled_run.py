"""A run that accepts nothing stops and says why instead of generating forever."""

import json

import pytest

pytestmark = pytest.mark.slow
QUIET = ["eval_every=0", "logging.tensorboard=false", "logging.wandb_mode=disabled"]


def test_a_run_whose_groups_are_all_filtered_stops_naming_the_reason(ray_session, tmp_path):
    from actors.driver import RunStalled
    from launch.config_loader import load_config
    from launch.train import train

    # answers the tiny arithmetic model never writes: every sample scores 0, every group is filtered
    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i} plus {i}?", "answer": f"#### {987650 + i}"}) + "\n"
                            for i in range(40)))
    cfg, resolved = load_config(["experiment=ci_tiny", f"out_dir={tmp_path / 'run'}", "task.type=gsm8k",
                                 f"task.path={data}", "task.eval_size=4", "algo.filter_zero_variance=true",
                                 "controller.max_unaccepted_groups=6", *QUIET])
    with pytest.raises(RunStalled) as err:
        train(cfg, resolved)
    message = str(err.value)
    assert "no rollout group accepted in the last" in message and "filtered" in message
    assert "controller.max_unaccepted_groups=6" in message and "algo.filter_zero_variance=false" in message
