"""End to end on the tiny model, through the path a user's data takes: a parquet file, a TRL-style reward
function plus a built-in, a named held-out set with pass@k; vLLM rollouts, DeepSpeed learner, Ray actors, weight
sync, metrics, the generations on disk, resume, and `areal eval` of the run's checkpoint. One run serves every
check (each end-to-end run pays ~40 s of actor start-up)."""

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


def run_overrides(data, out) -> list[str]:
    return ["experiment=ci_tiny", f"out_dir={out}", "task.type=dataset", f"task.path={data / 'train.parquet'}",
            "task.rewards=[tests.reward_fns:exact,soft_overlong]", "task.reward_weights=[1.0,0.5]",
            "task.eval_size=16", "task.eval_k=2", f"task.eval_sets=[{{name:hard,path:{data / 'hard.parquet'},k:0}}]"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    pq.write_table(pa.Table.from_pylist(arithmetic_rows(300, 0)), path / "train.parquet")
    pq.write_table(pa.Table.from_pylist(arithmetic_rows(12, 1, 100, 400)), path / "hard.parquet")
    return path


@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory, ray_session):
    from launch.config_loader import load_config
    from launch.train import train

    out = tmp_path_factory.mktemp("run")
    cfg, resolved = load_config(run_overrides(data, out))
    summary = train(cfg, resolved)
    return cfg, out, summary


def test_training_happened_and_versions_advanced(finished_run):
    cfg, out, summary = finished_run
    assert summary["steps"] == cfg.total_steps
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "learner/loss" in r]
    assert [r["staleness/version"] for r in trained] == [1.0, 2.0, 3.0, 4.0]
    assert all(r["learner/tokens"] > 0 for r in trained)


def test_weights_reached_the_rollout_workers(finished_run):
    cfg, _, summary = finished_run
    assert summary["rollout_engine_versions"] == [cfg.total_steps] * cfg.rollout.workers
    assert summary["eval_outputs_changed"] > 0  # greedy generation differs after the updates


def test_the_engines_loaded_every_second_version(finished_run):
    cfg, out, _ = finished_run
    assert cfg.rollout.sync_every == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    synced = [r["staleness/version"] for r in rows if "weights/sync_seconds" in r]
    assert synced == [2.0, 4.0]


def test_no_trained_sample_exceeded_the_staleness_bound(finished_run):
    cfg, out, summary = finished_run
    assert summary["max_trained_staleness"] <= cfg.algo.max_staleness


def test_outputs_are_where_the_readme_says(finished_run):
    cfg, out, summary = finished_run
    assert (out / "checkpoints" / f"step-{cfg.total_steps:08d}" / "model" / "model.safetensors").exists()
    assert (out / "config.yaml").exists() and (out / "summary.json").exists()
    assert any((out / "tensorboard").iterdir())
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(f"{summary['checkpoint']}/model")


def test_a_resumed_run_continues_from_the_last_checkpoint(finished_run, data, tmp_path):
    import shutil

    from launch.config_loader import load_config
    from launch.train import train

    cfg, out, _ = finished_run
    shutil.copytree(out / "checkpoints", tmp_path / "checkpoints")
    more = cfg.total_steps + 2
    cfg2, resolved = load_config([*run_overrides(data, tmp_path), f"total_steps={more}", "checkpoint.resume=true"])
    summary = train(cfg2, resolved)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["staleness/version"] for r in rows if "learner/loss" in r] == [cfg.total_steps + 1.0, float(more)]
    assert summary["rollout_engine_versions"] == [more]
    assert (tmp_path / "checkpoints" / f"step-{more:08d}" / "manifest.json").exists()


def test_the_run_trained_on_the_rows_and_logged_each_reward_function(finished_run):
    cfg, out, summary = finished_run
    assert summary["steps"] == cfg.total_steps
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "learner/loss" in r]
    assert len(trained) == cfg.total_steps
    with_shape = [r for r in trained if "rollout/completion_tokens_mean" in r]
    assert with_shape and all(0 < r["rollout/completion_tokens_max"] <= cfg.rollout.max_new_tokens for r in with_shape)
    assert all(r["rollout/prompt_tokens_mean"] == 6.0 for r in with_shape)  # "ab+cd=" in the char vocabulary
    assert all("reward/exact" in r and "reward/soft_overlong" in r and r["reward/exact_failures"] == 0.0
               for r in with_shape)


def test_every_held_out_set_was_evaluated_and_its_generations_written(finished_run):
    cfg, out, _ = finished_run
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


def test_areal_eval_of_the_run_scores_its_checkpoint_as_the_run_did(finished_run, tmp_path):
    from launch.evaluate import eval_config, evaluate

    _, out, summary = finished_run
    cfg, _, step = eval_config(str(out), [f"out_dir={tmp_path}"])
    assert step == 4 and cfg.model_path == f"{summary['checkpoint']}/model" and cfg.task.eval_k == 2
    metrics = evaluate(cfg, step)
    assert metrics["eval/accuracy"] == summary["final_eval"]  # greedy, the same weights, the same prompts
    assert (tmp_path / "generations" / "hard" / "step-000004.jsonl").exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["eval/accuracy"] == summary["final_eval"]
