"""A run directory belongs to one run.

A new run into a directory that holds another run's files would append to its metrics, mix
checkpoints (pruning keeps the highest step numbers, so it could delete its own fresh one) and
could later restore the older run's state. So a run starts only in an empty or new directory,
continues the run already there (``checkpoint.resume``), or replaces it on request (``overwrite``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from areal.config import TrainConfig

# areal's own mark on a directory it made for a run: overwrite=true deletes only what carries it (a config.yaml alone
# proves nothing: out_dir=. in a project with one would have emptied the project)
RUN_MARKER = ".areal-run"


class RunDirError(ValueError):
    """``out_dir`` cannot take this run; the message names the setting that would allow it."""


def continues_run_in(cfg: TrainConfig, out: Path) -> bool:
    """Whether the run resumes the run that lives in ``out`` (rather than one elsewhere)."""
    if cfg.checkpoint.resume:
        return True
    if not cfg.checkpoint.resume_from:
        return False
    source, out = Path(cfg.checkpoint.resume_from).resolve(), out.resolve()
    return source == out or out in source.parents


def check_run_dir(cfg: TrainConfig, resumable: bool) -> bool:
    """Whether ``out_dir`` can take this run; True when an earlier run there must be emptied first
    (``overwrite``). RunDirError naming the setting that would allow it otherwise. Changes nothing.

    ``resumable``: a checkpoint to continue from was found (``checkpoint.resume`` alone may find none).
    """
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"out_dir={out} is a file; give a directory for the run")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries or (resumable and continues_run_in(cfg, out)):
        return False
    if not cfg.overwrite:
        held = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        why = ("checkpoint.resume=true found no complete checkpoint there to continue from"
               if cfg.checkpoint.resume else "continue that run with checkpoint.resume=true")
        raise RunDirError(f"out_dir={out} already holds a run ({held}): {why}; replace it with overwrite=true, "
                          "or choose another out_dir")
    if RUN_MARKER not in entries:
        raise RunDirError(f"overwrite=true: out_dir={out} holds no {RUN_MARKER} (the file areal writes into every "
                          "run directory it makes), so it is not a run directory; refusing to delete it: choose "
                          "another out_dir, or empty it yourself")
    return True


def prepare_run_dir(cfg: TrainConfig, resumable: bool) -> Path:
    """Check ``out_dir`` for this run (``check_run_dir``) and create it; with ``overwrite`` empty an earlier run's
    directory first."""
    out = Path(cfg.out_dir)
    if check_run_dir(cfg, resumable):
        for path in out.iterdir():
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    return mark(out)


def mark(out: Path) -> Path:
    """Create ``out`` (if needed) and mark it as a run directory areal made."""
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_MARKER).touch()
    return out
