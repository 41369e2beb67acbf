"""SIGTERM and SIGINT end a run in one line, at any moment: start-up, training or shutdown.

The handler is installed before anything else the command does, so a signal during the imports, the config
check or Ray's start-up ends the same way as one during training: the run's actors and embedded Ray shut down,
and the console gets one line saying what was running, the newest checkpoint if any, and how to continue.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM or Ctrl-C stopped the command; ``resume_hint`` says how to continue it."""

    resume_hint = ""


_LAST_SIGNAL = ""


def as_run_interrupted(exc: KeyboardInterrupt) -> RunInterrupted:
    """``exc`` as the RunInterrupted it stands for: a signal that arrives while Ray's core waits (``ray.wait``,
    ``ray.get``) runs the handler, but Ray replaces the handler's exception with a plain KeyboardInterrupt (seen:
    Ctrl-C during a run's first evaluation printed a traceback instead of the one line)."""
    if isinstance(exc, RunInterrupted):
        return exc
    return RunInterrupted(f"stopped by {_LAST_SIGNAL or 'SIGINT'}")


def stop_on_signals() -> None:
    """SIGTERM (kill, Slurm's scancel, Kubernetes) and SIGINT raise ``RunInterrupted`` in the main thread, so the
    run shuts its actors and its embedded Ray down. Ray's core installs a handler for SIGTERM that aborts the
    process, which left Ray's dashboard and runtime-env agents running; so this is installed again after
    ``ray.init``. A second signal during the shutdown is ignored (the scheduler's SIGKILL follows if it takes
    too long): a second exception there would abandon the shutdown half-way and print a traceback."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        global _LAST_SIGNAL
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _LAST_SIGNAL = signal.Signals(signum).name
        raise RunInterrupted(f"stopped by {_LAST_SIGNAL}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def resume_hint(out_dir: str, keep_last: int, started: bool) -> str:
    """How to continue a stopped run, naming its newest checkpoint (``started``: its directory was made)."""
    from learners.checkpoint import CheckpointStore

    if not started:
        return "nothing was written; run the same command again"
    steps = CheckpointStore(Path(out_dir) / "checkpoints", keep_last).steps()
    if not steps:
        return (f"no checkpoint was written in {out_dir}; start again there with overwrite=true, or use "
                "another out_dir")
    return (f"newest checkpoint {steps[-1]}; continue with: areal train <same overrides> out_dir={out_dir} "
            "checkpoint.resume=true")
