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


def provenance(workload: str, hardware_note: str = "CPU only") -> dict[str, str]:
    """The ``setup`` block of a result: how to reproduce it and where it ran."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=RESULTS.parent, timeout=10).stdout.strip() or "unknown"
        # results of uncommitted code say so: the commit alone would not reproduce them
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "areal", "actors",
                                  "learners", "rollouts", "launch", "bench", "configs"],
                                 capture_output=True, text=True, cwd=RESULTS.parents[1], timeout=10).stdout.strip()
        if changed:
            commit += "-dirty"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {
        "command": "python bench/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "commit": commit,
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "hardware": f"{platform.machine()}, {os.cpu_count()} cores, {hardware_note}",
        "workload": workload,
    }


def write_results(stem: str, result: dict, markdown: str) -> None:
    """bench/results/<stem>.json and .md, and the table on stdout."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown)
    print(markdown)
