"""The terminal of a run: one live progress line and rare milestones; everything else in RUN_DIR/logs.

Quiet (the default), the console shows milestone records (``actors.milestones``: start, evals,
checkpoints), warnings of areal's own packages and errors from anyone; a warning or error that
repeats shows at most once per ``RATE_LIMIT_S`` per kind, saying how many were held back.
RUN_DIR/logs/driver.log gets every INFO record of the driver process and the DEBUG records of
areal's own packages. Worker processes print to Ray's worker log files, which RUN_DIR/logs/ray
links to (``announce_ray``). ``logging.verbose=true`` puts every INFO record on the console, and
Ray streams the workers' output there too (``log_to_driver``), as before.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from actors.milestones import MILESTONE, is_milestone

OWN_PACKAGES = ("areal", "actors", "launch", "learners", "rollouts")
# Libraries whose loggers print through a handler of their own (not the root's) are routed through the root
# logger while a run lasts (``self_handled_loggers``), so their lines land in driver.log and the quiet console
# can hold them back. Ray and vLLM install their handler on import; transformers on first use, so it is
# switched through its own API instead (``route_transformers``).
# the one-time bootstrap of a demo model runs for minutes before any progress bar: its sparse progress lines
# are milestones
MILESTONE_LOGGERS = ("launch.bootstrap", "launch.diffusion_bootstrap")
RATE_LIMIT_S = 30.0
LOG_DIR = "logs"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_active: RunConsole | None = None


class RateLimiter:
    """Per kind of message the first passes, then at most one per ``interval`` seconds; the rest are counted."""

    def __init__(self, interval: float):
        self.interval = interval
        self.last_shown: dict[tuple, float] = {}
        self.held: dict[tuple, tuple[int, str]] = {}  # kind -> (count held back, the latest such message)

    def admit(self, kind: tuple, now: float, message: str) -> int | None:
        """How many of ``kind`` were held back since the last one shown, or None: hold this one back too."""
        last = self.last_shown.get(kind)
        if last is not None and now - last < self.interval:
            count, _ = self.held.get(kind, (0, ""))
            self.held[kind] = (count + 1, message)
            return None
        self.last_shown[kind] = now
        count, _ = self.held.pop(kind, (0, ""))
        return count

    def drain(self) -> list[tuple[int, str]]:
        """(count, latest message) of every kind with records still held back; forgets them."""
        held, self.held = list(self.held.values()), {}
        return held


def shown_quietly(record: logging.LogRecord) -> bool:
    """Milestones (marked, or from a demo-model bootstrap), warnings of areal's own packages, and errors from anyone
    reach the quiet console."""
    if is_milestone(record) or record.levelno >= logging.ERROR or record.name in MILESTONE_LOGGERS:
        return True
    return record.levelno >= logging.WARNING and record.name.split(".")[0] in OWN_PACKAGES


class TerminalHandler(logging.Handler):
    """Writes to whatever sys.stderr is when a record arrives: while the progress bar is live that is rich's
    proxy, which prints the line above the bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.render(record)
            if text is not None:
                sys.stderr.write(text + "\n")
                sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging's own contract: report through handleError, never raise
            self.handleError(record)

    def render(self, record: logging.LogRecord) -> str | None:
        return self.format(record)


class QuietTerminalHandler(TerminalHandler):
    """The quiet console: ``shown_quietly`` records, repeated warnings rate limited."""

    def __init__(self, log_path: Path, interval: float = RATE_LIMIT_S):
        super().__init__(logging.INFO)
        self.log_path, self.limiter = log_path, RateLimiter(interval)
        self.milestone_format = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        self.alert_format = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")

    def render(self, record: logging.LogRecord) -> str | None:
        if not shown_quietly(record):
            return None
        if record.levelno < logging.WARNING:
            return self.milestone_format.format(record)
        held = self.limiter.admit((record.name, str(record.msg)), record.created, record.getMessage())
        if held is None:
            return None
        # one line per record: a Ray error spans a dozen lines, a traceback more; driver.log has them whole
        text, _, rest = self.alert_format.format(record).partition("\n")
        if rest:
            text += " [...]"
        return text + (f" ({held} more like this not shown; all in {self.log_path})" if held else
                       f" (whole message in {self.log_path})" if rest else "")

    def close(self) -> None:
        for count, message in self.limiter.drain():
            sys.stderr.write(f"({count} more like '{message[:100]}' not shown; all in {self.log_path})\n")
        super().close()


class RunConsole:
    """The logging set-up of one run (``setup_console``); ``close`` undoes it."""

    def __init__(self, run_dir: Path, verbose: bool):
        self.log_path = Path(run_dir) / LOG_DIR / "driver.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.file = logging.FileHandler(self.log_path, encoding="utf-8")
        self.file.setFormatter(logging.Formatter(FILE_FORMAT))
        if verbose:
            self.terminal: TerminalHandler = TerminalHandler(logging.INFO)
            self.terminal.setFormatter(logging.Formatter(FILE_FORMAT))
        else:
            self.terminal = QuietTerminalHandler(self.log_path)
        root = logging.getLogger()
        # only our own DEBUG records: a root at DEBUG would make every library build records nobody reads
        self.saved_levels = {name: logging.getLogger(name).level for name in ("", *OWN_PACKAGES)}
        root.setLevel(logging.INFO)
        for name in OWN_PACKAGES:
            logging.getLogger(name).setLevel(logging.DEBUG)
        self.saved_own_handlers = {}
        for name in self_handled_loggers():
            logger = logging.getLogger(name)
            self.saved_own_handlers[name] = (list(logger.handlers), logger.propagate)
            logger.handlers, logger.propagate = [], True
        route_transformers(True)
        root.addHandler(self.file)
        root.addHandler(self.terminal)
        logging.captureWarnings(True)  # library warnings go to driver.log, not over the progress line

    def close(self) -> None:
        root = logging.getLogger()
        for handler in (self.terminal, self.file):
            root.removeHandler(handler)
            handler.close()
        for name, level in self.saved_levels.items():
            logging.getLogger(name).setLevel(level)
        for name, (handlers, propagate) in self.saved_own_handlers.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
        route_transformers(False)
        logging.captureWarnings(False)


def self_handled_loggers() -> list[str]:
    """Every library logger configured so far that prints through its own handler and not the root's (Ray's
    once ray is imported, vLLM's once vllm is)."""
    return sorted(name for name, logger in logging.root.manager.loggerDict.items()
                  if isinstance(logger, logging.Logger) and not logger.propagate and logger.handlers
                  and name.split(".")[0] not in (*OWN_PACKAGES, "transformers"))


def route_transformers(through_root: bool) -> None:
    """transformers' records through the root logger (True), or back to its own stderr handler (its default)."""
    from transformers.utils import logging as hf_logging

    if through_root:
        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()
    else:
        hf_logging.enable_default_handler()
        hf_logging.disable_propagation()


def setup_console(run_dir: str | Path, verbose: bool,
                  holds: str = "config.yaml, metrics.jsonl, checkpoints/") -> RunConsole:
    """Route this process's logging for a run in ``run_dir`` (replacing an earlier run's set-up) and say on the
    console where the full log is (and what else the directory ``holds``). Import ray before calling it:
    importing ray installs Ray's own handler."""
    global _active
    if _active is not None:
        _active.close()
    _active = RunConsole(Path(run_dir), verbose)
    log = logging.getLogger(__name__)
    log.info("run directory %s: %s", run_dir, holds, extra=MILESTONE)
    if not verbose:
        log.info("full log: %s (the console shows milestones only; logging.verbose=true shows everything)",
                 _active.log_path, extra=MILESTONE)
    return _active


def close_console() -> None:
    """Undo ``setup_console``; reports warnings still held back by the rate limit."""
    global _active
    if _active is not None:
        _active.close()
        _active = None


def link_worker_logs(run_dir: Path, session_dir: str) -> Path | None:
    """RUN_DIR/logs/ray -> the Ray session's log directory (every worker's stdout and stderr, as
    worker-*.out / .err), or None when that directory is not on this machine (a cluster's head elsewhere)."""
    target = Path(session_dir) / "logs" if session_dir else None
    if target is None or not target.is_dir():
        return None
    link = Path(run_dir) / LOG_DIR / "ray"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():  # the session of an earlier attempt (a resumed run): keep it under its session's name
        earlier = link.parent / f"ray-{Path(os.readlink(link)).parent.name}"
        if earlier.is_symlink() or earlier.exists():
            link.unlink()
        else:
            link.rename(earlier)
    if link.exists():
        return None  # something that is not ours: leave it
    link.symlink_to(target, target_is_directory=True)
    return link


def announce_ray(context, run_dir: Path) -> None:
    """Milestones after ``ray.init`` (``context`` is what it returned): the dashboard link and where the workers'
    output is kept."""
    log = logging.getLogger(__name__)
    url = getattr(context, "dashboard_url", "") or ""
    if url:
        log.info("Ray dashboard: http://%s", url, extra=MILESTONE)
    session_dir = (getattr(context, "address_info", None) or {}).get("session_dir", "")
    link = link_worker_logs(run_dir, session_dir)
    if link is not None:
        log.info("worker logs (vLLM, DeepSpeed, rewards): %s/worker-*.err and .out", link, extra=MILESTONE)
    else:
        log.info("worker logs: Ray's session logs on each node (%s/logs)", session_dir or "/tmp/ray/session_*",
                 extra=MILESTONE)
