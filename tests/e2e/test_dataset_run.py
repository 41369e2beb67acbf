"""End to end through the path a user's data takes: a parquet file, a TRL-style reward function plus a built-in,
a named held-out set with pass@k, the generations on disk, and `areal eval` of the run's checkpoint."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow


def arithmetic_rows(count: int, seed: int, low: int = 10, high: int = 99) -> list[dict]:
    import random

    r = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = r.randint(low, high), r.randint(low, high)
        rows.append({"prompt": f"{a}+{b}=", "answer": str(a + b), "level": 1})
    return rows


@pytest.fixture(scope="module")
def dataset_run(tmp_path_factory, ray_session):
    from launch.config_loader import load_config
    from launch.train import train

    data = tmp_path_factory.mktemp("data")
    pq.write_table(pa.Table.from_pylist(arithmetic_rows(300, 0)), data / "train.parquet")
    pq.write_table(pa.Table.from_pylist(arithmetic_rows(12, 1, 100, 400)), data / "hard.parquet")
    out = tmp_path_factory.mktemp("run")
    cfg, resolved = load_config([
        "experiment=ci_tiny", f"out_dir={out}", "task.type=dataset", f"task.path={data / 'train.parquet'}",
        "task.rewards=[tests.reward_fns:exact,soft_overlong]", "task.reward_weights=[1.0,0.5]", "task.eval_size=16",
        "task.eval_k=2", f"task.eval_sets=[{{name:hard,path:{data / 'hard.parquet'},k:0}}]",
        "logging.wandb_mode=disabled", "logging.tensorboard=false"])
    summary = train(cfg, resolved)
    return cfg, out, summary


def test_the_run_trained_on_the_rows_and_logged_each_reward_function(dataset_run):
    cfg, out, summary = dataset_run
    assert summary["steps"] == cfg.total_steps
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "learner/loss" in r]
    assert len(trained) == cfg.total_steps
    with_shape = [r for r in trained if "rollout/completion_tokens_mean" in r]
    assert with_shape and all(0 < r["rollout/completion_tokens_max"] <= cfg.rollout.max_new_tokens for r in with_shape)
    assert all(r["rollout/prompt_tokens_mean"] == 6.0 for r in with_shape)  # "ab+cd=" in the char vocabulary
    assert all("reward/exact" in r and "reward/soft_overlong" in r and r["reward/exact_failures"] == 0.0
               for r in with_shape)


def test_every_held_out_set_was_evaluated_and_its_generations_written(dataset_run):
    cfg, out, _ = dataset_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert all({"eval/pass@1", "eval/pass@2", "eval/mean@2", "eval/hard/accuracy", "eval/length_mean"} <= set(r)
               for r in evals)
    assert not any("eval/hard/pass@2" in r for r in evals)
    written = sorted(p.name for p in (out / "generations" / "eval").iterdir())
    assert written == ["step-000000.jsonl", "step-000002.jsonl", "step-000004.jsonl"]
    first = [json.loads(line) for line in (out / "generations" / "eval" / "step-000004.jsonl").open()]
    assert len(first) == 16 and all(len(r["samples"]) == 2 and set(r["rewards"]) == {"exact", "soft_overlong"}
                                    for r in first)
    hard = [json.loads(line) for line in (out / "generations" / "hard" / "step-000004.jsonl").open()]
    assert len(hard) == 12 and all(int(r["prompt"].split("+")[0]) >= 100 for r in hard)


def test_areal_eval_of_the_run_scores_its_checkpoint_as_the_run_did(dataset_run, tmp_path):
    from launch.evaluate import eval_config, evaluate

    _, out, summary = dataset_run
    cfg, _, step = eval_config(str(out), [f"out_dir={tmp_path}"])
    assert step == 4 and cfg.model_path == f"{summary['checkpoint']}/model" and cfg.task.eval_k == 2
    metrics = evaluate(cfg, step)
    assert metrics["eval/accuracy"] == summary["final_eval"]  # greedy, the same weights, the same prompts
    assert (tmp_path / "generations" / "hard" / "step-000004.jsonl").exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["eval/accuracy"] == summary["final_eval"]
