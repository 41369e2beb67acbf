"""What `areal train` (and `eval`, `config`) refuses before anything starts: a specification.

Each mistake ends in one line on stderr that names the key or file and the fix, exit status 2, no traceback,
no Ray started (the command runs with ``ray.init`` replaced by a failure) and ``out_dir`` absent or unchanged;
each in a second or two. A signal at start-up ends in one line and exit 130, leaving nothing behind.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# the CLI, with Ray unable to start: a refusal that got as far as ray.init fails the test
NO_RAY = ("import sys, ray; ray.init = lambda *a, **k: sys.exit('ray.init was called'); "
          "from launch.cli import main; sys.exit(main(sys.argv[1:]))")


def areal(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", NO_RAY, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def assert_refused(done: subprocess.CompletedProcess, command: str, *words: str) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"areal {command}: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Dataset files a user might point task.path at: good, malformed, empty, too small."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("data")
    pq.write_table(pa.table({"prompt": [f"{i}+1=" for i in range(20)], "answer": [str(i + 1) for i in range(20)]}),
                   root / "small.parquet")
    pq.write_table(pa.table({"question": ["1+1="], "answer": ["2"]}), root / "wrong_column.parquet")
    (root / "garbage.parquet").write_bytes(b"not a parquet file")
    (root / "empty.jsonl").write_text("")
    (root / "a_file").write_text("x")
    (root / "short_model").mkdir()
    (root / "short_model" / "config.json").write_text('{"model_type": "qwen2", "max_position_embeddings": 64}')
    (root / "my_envs.py").write_text("class Game:\n    pass\n")
    return root


def dataset(path: str, *more: str) -> list[str]:
    return ["task.type=dataset", f"task.path={path}", "task.rewards=[math_verify]", *more]


CASES = {
    # the schema: unknown keys, with or without Hydra's +, get the nearest known key
    "typo": (["rollout.worker=2"], "unknown key rollout.worker", "did you mean rollout.workers"),
    "typo_with_plus": (["+rollout.worker=2"], "unknown key rollout.worker", "rollout.workers"),
    "invented_key": (["+foo=1"], "unknown key foo", "areal config --keys"),
    "hydra_setting": (["hydra.verbose=true"], "hydra.verbose"),
    "no_equals": (["rollout.workers"], "rollout.workers", "key=value"),
    "bad_type": (["rollout.workers=abc"], "rollout.workers", "abc"),
    "unknown_preset": (["experiment=nope"], "experiment=nope", "arith_tiny"),
    # values: signs and ranges
    "negative_min_workers": (["rollout.min_workers=-1"], "rollout.min_workers", ">= 0"),
    "negative_cpus": (["rollout.num_cpus=-1"], "rollout.num_cpus", ">= 0"),
    "negative_gpus": (["learner.num_gpus=-1"], "learner.num_gpus", ">= 0"),
    # a setting the run would not read names the one it reads
    "lora_on_ddpo": (["experiment=ddpo_tiny", "learner.lora.rank=8"], "learner.lora.rank", "diffusion.lora_rank"),
    "env_key_without_env": (["env.max_turns=3"], "env.max_turns", "env.type"),
    # imports of module:name
    "env_factory_missing": (["env.type=custom", "env.factory=no_such_module:Game"], "env.factory", "no_such_module"),
    "reward_missing": (dataset("{data}/small.parquet", "task.rewards=[no_such_module:score]"), "no_such_module"),
    # files and models
    "model_missing": (["model_path={data}/no_model"], "model_path", "no such directory"),
    "model_not_a_model": (["model_path={data}"], "model_path", "config.json"),
    "context_past_the_model": (["model_path={data}/short_model", "engine.max_model_len=128"], "engine.max_model_len",
                               "max_position_embeddings"),
    "dataset_missing": (dataset("{data}/missing.parquet"), "task.path", "no such file"),
    "dataset_malformed": (dataset("{data}/garbage.parquet"), "task.path"),
    "dataset_wrong_column": (dataset("{data}/wrong_column.parquet"), "prompt", "task.prompt_key"),
    "dataset_empty": (dataset("{data}/empty.jsonl"), "task.path"),
    "dataset_too_small": (dataset("{data}/small.parquet", "task.eval_size=20"), "task.eval_size"),
    "out_dir_under_a_file": (["out_dir={data}/a_file/run"], "out_dir", "is a file"),
    "out_dir_under_proc": (["out_dir=/proc/areal-run"], "out_dir", "/proc"),
    "resume_from_nothing": (["checkpoint.resume_from={data}"], "checkpoint.resume_from"),
    # resources
    "native_without_gpus": (["rollout.weight_transport=native"], "rollout.weight_transport", "GPU"),
    "cluster_not_answering": (["cluster.address=127.0.0.1:{port}"], "cluster.address", "nothing answers"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_mistake_is_one_line_before_anything_starts(case, data, tmp_path):
    overrides, *words = CASES[case]
    out = tmp_path / "run"
    args = [o.format(data=data, port=free_port()) for o in overrides]
    done = areal(tmp_path, "train", *args, *([] if any(a.startswith("out_dir=") for a in args) else [f"out_dir={out}"]))
    assert_refused(done, "train", *words)
    assert not out.exists()


def test_gpus_asked_for_on_a_machine_without_them_are_refused_naming_gpus(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    done = areal(tmp_path, "train", "learner.num_gpus=1", f"out_dir={tmp_path / 'run'}")
    assert_refused(done, "train", "learner.num_gpus", "GPUs", "this machine has 0")


def test_a_refused_run_leaves_an_existing_run_directory_unchanged(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("{}\n")
    done = areal(tmp_path, "train", f"out_dir={out}")
    assert_refused(done, "train", "already holds a run", "checkpoint.resume=true")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]


def test_verbose_shows_the_traceback_as_well(tmp_path):
    done = areal(tmp_path, "train", "rollout.worker=2", "logging.verbose=true")
    assert done.returncode == 2 and "Traceback" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("areal train: config error: unknown key rollout.worker")


def test_eval_and_config_refuse_alike(data, tmp_path):
    assert_refused(areal(tmp_path, "eval", str(data / "no_model")), "eval", "no_model")
    assert_refused(areal(tmp_path, "config", "rollout.worker=2"), "config", "did you mean rollout.workers")
    assert_refused(areal(tmp_path, "config", "--keys", "rollout.worker"), "config", "rollout.workers")


def test_config_prints_the_resolved_config_and_the_keys_with_their_docs(tmp_path):
    done = areal(tmp_path, "config", "experiment=arith_tiny")
    assert done.returncode == 0, done.stderr
    assert "batch_size: 16" in done.stdout and "max_staleness:" in done.stdout
    keys = areal(tmp_path, "config", "--keys", "algo", "algo.max_staleness=2")
    assert "algo.max_staleness: int = 4  (here: 2)" in keys.stdout
    assert "how many versions older than the trainer" in keys.stdout
    assert not any(line.startswith("rollout.") for line in keys.stdout.splitlines())
    assert areal(tmp_path, "train", "--cfg", "job", "experiment=arith_tiny").stdout == done.stdout
    assert not (tmp_path / "runs").exists()


def test_sigterm_during_start_up_is_one_line_and_exit_130(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "launch.cli", "train", "experiment=ci_tiny", f"out_dir={out}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # the imports and the config check
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    said = "areal train stopped by SIGTERM: nothing was written; run the same command again"
    assert stderr.strip().splitlines() == [said]
    assert not out.exists()
