"""Milestones: the few log lines the quiet console shows (start, evals, checkpoints, the end).

Mark an INFO record with ``log.info(..., extra=MILESTONE)``; warnings and errors of areal's own
packages reach the console without a mark. ``launch/console.py`` decides what the terminal shows;
this module only names the mark, so the driver need not import ``launch``.
"""

from __future__ import annotations

import logging

MILESTONE = {"milestone": True}


def is_milestone(record: logging.LogRecord) -> bool:
    """Whether ``record`` was logged with ``extra=MILESTONE``."""
    return bool(getattr(record, "milestone", False))
