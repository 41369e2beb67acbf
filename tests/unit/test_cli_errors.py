"""What the `areal` command refuses: a specification.

Every case below ends the same way: exit status 2, one line on stderr naming the option, key or file and the
fix, no traceback, nothing sent to a cluster and nothing written. Each drives the real command line in a
subprocess (from a scratch directory, so a default path would land where the test looks) and starts no Ray.
"""

import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from launch import jobs
from launch.cli import main
from launch.cli_checks import pip_packages

ROOT = Path(__file__).resolve().parents[2]
TYPO = "rollout.workerz=2"  # a key the schema does not have


def areal(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`areal ARGS` in ``cwd``, with no Ray token from this machine's environment."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", **env}
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=120)


def files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def assert_refused(done: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2, one line on stderr holding ``words``, no traceback, nothing on stdout."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    for word in words:
        assert word in done.stderr, done.stderr
    assert done.stdout == ""


class Recorder(http.server.BaseHTTPRequestHandler):
    """A dashboard that notes every request (a refused command must send none)."""

    seen: list[str] = []

    def do_GET(self):
        self.seen.append(self.path)
        self.send_response(404)
        self.end_headers()

    do_POST = do_PUT = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def dashboard():
    """(address, requests seen) of a recording dashboard on loopback."""
    Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", Recorder.seen
    server.shutdown()
    server.server_close()


@pytest.fixture
def fake_sbatch(tmp_path) -> dict:
    """PATH with an sbatch that records being run; returns the environment and the file it writes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/bash\ntouch {tmp_path / 'sbatch-ran'}\necho 4242\n")
    (bin_dir / "sbatch").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


@pytest.fixture
def work(tmp_path) -> Path:
    """An empty directory the command runs in."""
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


# --pip

def test_pip_is_repeatable_takes_comma_lists_and_leaves_the_overrides_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(jobs, "submit", lambda overrides, *a, **kw: calls.append((overrides, kw["pip"])) or
                        ("areal-1", "http://h:8265/#/jobs/areal-1"))
    assert main(["submit", "--pip", "trl", "experiment=arith_tiny", "out_dir=x"]) == 0
    assert main(["submit", "--pip", "trl", "--pip", "numpy,pandas", "experiment=arith_tiny", "out_dir=x"]) == 0
    assert calls == [(["experiment=arith_tiny", "out_dir=x"], ["trl"]),
                     (["experiment=arith_tiny", "out_dir=x"], ["trl", "numpy", "pandas"])]


def test_a_pip_comma_list_keeps_version_ranges_and_extras_whole():
    assert pip_packages("numpy>=1,<2, pandas") == ["numpy>=1,<2", "pandas"]
    assert pip_packages("ray[default,data],trl") == ["ray[default,data]", "trl"]


# the overrides, checked before anything is sent or written

def test_submit_checks_the_overrides_here_and_sends_nothing(work, dashboard):
    address, seen = dashboard
    assert_refused(areal(work, "submit", "--address", address, "experiment=arith_tiny", TYPO),
                   "areal submit:", "rollout.workerz", "nothing was submitted")
    assert seen == [] and files(work) == []


def test_submit_slurm_checks_the_overrides_here_and_runs_no_sbatch(work, fake_sbatch):
    assert_refused(areal(work, "submit", "--slurm", "experiment=arith_tiny", TYPO, **fake_sbatch),
                   "areal submit:", "rollout.workerz", "nothing was submitted")
    assert not (work.parent / "sbatch-ran").exists() and files(work) == []


def test_areal_slurm_checks_the_overrides_and_writes_no_script(work):
    assert_refused(areal(work, "slurm", "--script", "job.sbatch", "experiment=arith_tiny", TYPO),
                   "areal slurm:", "rollout.workerz", "no script was written")
    assert files(work) == []  # neither the script nor the log directory


def test_submit_refuses_a_negative_num_cpus_and_sends_nothing(work, dashboard):
    address, seen = dashboard
    assert_refused(areal(work, "submit", "--address", address, "--num-cpus", "-1", "experiment=arith_tiny"),
                   "--num-cpus", "nothing was submitted")
    assert seen == []


# the cluster's address and token

def test_an_address_without_a_scheme_is_the_dashboards_http_address():
    assert jobs.address("head:8265") == "http://head:8265"
    assert jobs.address("https://head:8265/") == "https://head:8265"
    assert jobs.address("http://head:8265") == "http://head:8265"
    with pytest.raises(ValueError, match="--address ftp://head: .*http://HEAD:8265"):
        jobs.address("ftp://head")


def test_status_at_an_address_without_a_scheme_is_one_line_naming_the_dashboard(work):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert_refused(areal(work, "status", "j1", "--address", f"127.0.0.1:{port}"),
                   f"no Ray dashboard at http://127.0.0.1:{port}", "--address")


@pytest.mark.parametrize("command", ["status", "logs", "stop"])
def test_an_unreadable_token_file_is_one_line_naming_it(work, dashboard, command):
    address, seen = dashboard
    assert_refused(areal(work, command, "j1", "--address", address, "--token-file", str(work)),
                   "--token-file", str(work))
    assert seen == []


def test_an_address_with_another_scheme_is_one_line_naming_it(work):
    assert_refused(areal(work, "status", "j1", "--address", "ftp://head"), "--address ftp://head")


# areal slurm and submit --slurm: the options

@pytest.mark.parametrize("flag, value, says", [
    ("--nodes", "0", ">= 1"), ("--nodes", "-2", ">= 1"), ("--cpus-per-node", "-1", ">= 1"),
    ("--gpus-per-node", "-1", ">= 0"), ("--partition", "gpu\nrm -rf ~", "control characters"),
    ("--token-dir", "/shared/a,b", "','"),
])
def test_a_slurm_option_the_script_cannot_take_is_one_line_naming_the_flag(work, fake_sbatch, flag, value, says):
    assert_refused(areal(work, "slurm", flag, value, "experiment=arith_tiny"), f"areal slurm: {flag} ", says,
                   "no script was written")
    assert_refused(areal(work, "submit", "--slurm", flag, value, "experiment=arith_tiny", **fake_sbatch),
                   f"areal submit: {flag} ", says, "nothing was submitted")
    assert files(work) == [] and not (work.parent / "sbatch-ran").exists()


def test_a_script_whose_directory_is_missing_is_one_line_naming_it(work):
    assert_refused(areal(work, "slurm", "--script", "nodir/x.sbatch", "experiment=arith_tiny"),
                   "--script nodir/x.sbatch", str(work / "nodir"), "no script was written")
    (work / "adir").mkdir()
    assert_refused(areal(work, "slurm", "--script", "adir", "experiment=arith_tiny"),
                   "--script adir", "is a directory")
    assert files(work) == ["adir"]


def test_a_log_dir_that_cannot_be_created_is_one_line_naming_it(work, fake_sbatch):
    (work / "taken").write_text("a file")
    for argv, end in ((["slurm"], "no script was written"), (["submit", "--slurm"], "nothing was submitted")):
        assert_refused(areal(work, *argv, "--log-dir", "taken/logs", "experiment=arith_tiny", **fake_sbatch),
                       "--log-dir taken/logs", "is a file", end)
    assert files(work) == ["taken"] and not (work.parent / "sbatch-ran").exists()


# areal bootstrap: --out is checked before minutes of training

def test_bootstrap_refuses_an_out_it_could_not_save_to_before_training(work):
    (work / "taken").write_text("a file")
    assert_refused(areal(work, "bootstrap", "--out", "taken"), "--out taken", "is a file")
    assert_refused(areal(work, "bootstrap", "--kind", "word_problems", "--out", "taken/data"),
                   "--out taken/data", "is a file")
    assert_refused(areal(work, "bootstrap", AREAL_CACHE=str(work / "taken")), "AREAL_CACHE", "--out")
    assert files(work) == ["taken"]


@pytest.mark.parametrize("kind", ["lm", "diffusion", "smollm2"])
def test_bootstrap_does_not_save_a_model_over_a_folder_of_other_files(work, kind):
    (work / "notes.txt").write_text("mine")
    assert_refused(areal(work, "bootstrap", "--kind", kind, "--out", "."), "--out .", "bootstrap.json",
                   "new or empty directory")
    assert files(work) == ["notes.txt"]


# areal report: only a run's directory

def test_report_refuses_what_is_not_a_run_directory_and_writes_nothing_into_it(work):
    (work / "empty").mkdir()
    (work / "afile").write_text("x")
    for target in ("missing", "empty", "afile"):
        assert_refused(areal(work, "report", target), f"areal report: {target} is not a run directory",
                       "out_dir of a run")
    assert files(work) == ["afile", "empty"]


def test_report_refuses_an_out_it_cannot_write(work):
    (work / "run").mkdir()
    (work / "run/metrics.jsonl").write_text('{"step": 0}\n')
    (work / "taken").write_text("a file")
    assert_refused(areal(work, "report", "run", "--out", "taken"), "--out taken", "is a file")
    assert files(work) == ["run", "run/metrics.jsonl", "taken"]


def test_report_takes_a_run_that_has_written_only_its_marker(work):
    (work / "run").mkdir()
    (work / "run/.areal-run").touch()
    done = areal(work, "report", "run")
    assert done.returncode == 0, done.stderr
    assert "no data yet" in (work / "run/report/report.html").read_text()


def test_an_option_argparse_refuses_is_one_line_too(tmp_path):
    done = areal(tmp_path, "slurm", "--nodes", "abc")
    assert_refused(done, "--nodes", "abc", "--help")
    assert files(tmp_path) == []
