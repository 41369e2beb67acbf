"""Cluster launch files: the sbatch script renders for a 2-node allocation and parses; the KubeRay RayJob has
the fields the operator needs."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from launch.cli import main
from launch.slurm.render import SlurmJob, render

ROOT = Path(__file__).resolve().parents[2]


def test_the_sbatch_script_renders_for_two_nodes_and_passes_bash_n(tmp_path):
    text = render(SlurmJob(nodes=2, cpus_per_node=8, gpus_per_node=1, out_dir="/shared/runs/a b",
                           overrides=["experiment=arith_tiny", "rollout.workers=2"],
                           extra_sbatch=["#SBATCH --partition=gpu"]))
    assert not re.findall(r"@\w+@", text)
    for line in ("#SBATCH --nodes=2", "#SBATCH --cpus-per-task=8", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --partition=gpu"):
        assert line in text
    assert "ray start --head" in text and 'ray start --address="$head_ip:$port"' in text
    assert "out_dir='/shared/runs/a b' experiment=arith_tiny rollout.workers=2" in text
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    bash = shutil.which("bash")
    assert subprocess.run([bash, "-n", str(script)], capture_output=True).returncode == 0


def test_gpu_lines_are_left_out_on_cpu_clusters_and_bad_values_are_refused():
    assert "--gpus-per-node" not in render(SlurmJob(gpus_per_node=0))
    with pytest.raises(ValueError, match="nodes"):
        SlurmJob(nodes=0)
    with pytest.raises(ValueError, match="#SBATCH"):
        SlurmJob(extra_sbatch=["--partition=gpu"])


def test_areal_slurm_writes_the_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["slurm", "--nodes", "2", "--script", "s.sbatch", "experiment=arith_tiny"]) == 0
    assert "#SBATCH --nodes=2" in (tmp_path / "s.sbatch").read_text() and (tmp_path / "runs/slurm-logs").is_dir()


def test_the_kuberay_rayjob_has_what_the_operator_needs():
    job = yaml.safe_load((ROOT / "launch/k8s/rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"].startswith("areal train ") and "cluster.address=auto" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    assert head["template"]["spec"]["containers"][0]["image"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and group["replicas"] >= 1 and "rayStartParams" in group
        assert group["template"]["spec"]["containers"][0]["image"]
    yaml.safe_load(spec["runtimeEnvYAML"])
