"""What every benchmark records beside its numbers: the command, commit, time and machine."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# a result of uncommitted code lands here instead of RESULTS (kept, not recorded; gitignored via runs/)
UNRECORDED = RESULTS.parents[1] / "runs" / "bench_unrecorded"
ALLOW_DIRTY = "AREAL_BENCH_ALLOW_DIRTY"
# the code a result depends on; bench/results itself and docs do not change a number
CODE_DIRS = ("areal", "actors", "learners", "rollouts", "launch", "bench", "configs", "pyproject.toml")


def uncommitted_changes(root: Path = RESULTS.parents[1]) -> list[str]:
    """Paths of the code under ``root`` that differ from its commit (new files included)."""
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", *CODE_DIRS,
                          ":(exclude)bench/results"],
                         capture_output=True, text=True, cwd=root, timeout=10, check=True).stdout
    return [line[3:] for line in out.splitlines() if line.strip()]


def tree_state(root: Path = RESULTS.parents[1]) -> tuple[str, bool]:
    """(short commit of HEAD, whether the code differs from it); ("unknown", False) outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=root, timeout=10).stdout.strip() or "unknown"
        return commit, bool(uncommitted_changes(root))
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


# A benchmark runs the code of the moment it started (workers it starts later import it too), so the tree is
# read when the benchmark imports this module, before its long runs, and again when it writes its result.
AT_START = tree_state()


def commit_of_run(start: tuple[str, bool], end: tuple[str, bool]) -> str:
    """The commit that reproduces a run, ``-dirty`` when none does: uncommitted changes at its start or end, or
    a commit made while it ran (part of it may have run the newer code)."""
    (commit, dirty), (later, dirty_later) = start, end
    return commit + ("-dirty" if dirty or dirty_later or later != commit else "")


def provenance(workload: str, hardware_note: str = "CPU only") -> dict[str, str]:
    """The ``setup`` block of a result: how to reproduce it and where it ran."""
    commit = commit_of_run(AT_START, tree_state())
    return {
        "command": "python bench/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "commit": commit,
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "hardware": f"{platform.machine()}, {os.cpu_count()} cores, {hardware_note}",
        "workload": workload,
    }


def write_results(stem: str, result: dict, markdown: str, results: Path = RESULTS,
                  unrecorded: Path = UNRECORDED) -> None:
    """bench/results/<stem>.json and .md, and the table on stdout.

    A result measured on uncommitted code is not recorded: its commit would not reproduce it. It is
    kept under ``unrecorded`` (nothing measured is lost) and the run ends with the fix, unless
    AREAL_BENCH_ALLOW_DIRTY=1 says to record it anyway (its commit then reads ``<sha>-dirty``).
    """
    dirty = str(result.get("setup", {}).get("commit", "")).endswith("-dirty")
    target = unrecorded if dirty and os.environ.get(ALLOW_DIRTY) != "1" else results
    target.mkdir(parents=True, exist_ok=True)
    (target / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (target / f"{stem}.md").write_text(markdown)
    print(markdown)
    if target != results:
        raise SystemExit(
            f"bench: not recorded in {results}: measured on uncommitted code (git status shows changes under "
            f"{', '.join(CODE_DIRS)}), so its commit would not reproduce it. Kept at {target / stem}.json/.md. "
            f"Commit and rerun, or set {ALLOW_DIRTY}=1 to record it marked -dirty.")
