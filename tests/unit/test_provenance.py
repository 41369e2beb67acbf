"""A benchmark result is recorded only when its commit reproduces it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.provenance import ALLOW_DIRTY, commit_of_run, uncommitted_changes, write_results  # noqa: E402


def _result(commit: str) -> dict:
    return {"setup": {"command": "python bench/x.py", "commit": commit}, "value": 1.5}


def test_a_clean_result_is_recorded(tmp_path):
    write_results("x", _result("abc1234"), "| x |\n", results=tmp_path / "results", unrecorded=tmp_path / "kept")
    assert json.loads((tmp_path / "results" / "x.json").read_text())["value"] == 1.5
    assert (tmp_path / "results" / "x.md").read_text() == "| x |\n"
    assert not (tmp_path / "kept").exists()


def test_a_dirty_result_is_kept_but_not_recorded(tmp_path, monkeypatch):
    monkeypatch.delenv(ALLOW_DIRTY, raising=False)
    with pytest.raises(SystemExit, match=f"uncommitted code.*{ALLOW_DIRTY}=1"):
        write_results("x", _result("abc1234-dirty"), "| x |\n", results=tmp_path / "results",
                      unrecorded=tmp_path / "kept")
    assert not (tmp_path / "results").exists()
    assert json.loads((tmp_path / "kept" / "x.json").read_text())["value"] == 1.5


def test_told_so_a_dirty_result_is_recorded_marked(tmp_path, monkeypatch):
    monkeypatch.setenv(ALLOW_DIRTY, "1")
    write_results("x", _result("abc1234-dirty"), "| x |\n", results=tmp_path / "results", unrecorded=tmp_path / "kept")
    assert json.loads((tmp_path / "results" / "x.json").read_text())["setup"]["commit"] == "abc1234-dirty"


def test_changes_to_code_count_and_to_results_or_docs_do_not(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    for name in ("areal/a.py", "bench/results/r.md", "docs/d.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("one\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    assert uncommitted_changes(tmp_path) == []

    (tmp_path / "bench/results/r.md").write_text("two\n")
    (tmp_path / "docs/d.md").write_text("two\n")
    assert uncommitted_changes(tmp_path) == []

    (tmp_path / "areal/a.py").write_text("two\n")
    (tmp_path / "rollouts").mkdir()
    (tmp_path / "rollouts/new.py").write_text("new\n")
    assert sorted(uncommitted_changes(tmp_path)) == ["areal/a.py", "rollouts/new.py"]


def test_a_run_is_reproduced_by_its_commit_only_if_the_tree_was_clean_and_unmoved_throughout():
    assert commit_of_run(("abc1234", False), ("abc1234", False)) == "abc1234"
    assert commit_of_run(("abc1234", True), ("abc1234", False)) == "abc1234-dirty"
    assert commit_of_run(("abc1234", False), ("abc1234", True)) == "abc1234-dirty"
    # committed mid-run: the later part may have run the newer code
    assert commit_of_run(("abc1234", False), ("def5678", False)) == "abc1234-dirty"
