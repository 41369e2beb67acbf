"""Checks of the `areal` command's option values that need no config: each is made before anything is sent,
trained or written, and fails as one line naming the option and the fix (never a traceback minutes later)."""

from __future__ import annotations

import os
import re
from pathlib import Path

# what `areal bootstrap` writes into every model directory it makes (each kind's record of its settings): a folder
# holding it is an earlier bootstrap's, which may be reused or replaced
BOOTSTRAP_RECORD = "bootstrap.json"
# a comma that separates two --pip packages: not inside extras ("pkg[a,b]"), not before a further version clause
# ("numpy>=1,<2", whose clauses start with an operator)
PIP_SEPARATOR = re.compile(r",(?![^\[]*\])(?!\s*[<>=!~])")


class OptionError(ValueError):
    """An option value the command refuses; the message is one line naming the option and the fix."""


def pip_packages(text: str) -> list[str]:
    """The packages of one --pip value: one package or a comma-separated list of them."""
    return [p.strip() for p in PIP_SEPARATOR.split(text) if p.strip()]


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (what creating ``path`` starts from)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def dir_problem(path: str | Path) -> str:
    """Why ``path`` cannot be (or become) a directory this user writes into; "" when it can."""
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            return f"{path} is a file, not a directory"
        return "" if os.access(path, os.W_OK | os.X_OK) else f"{path} is not writable by this user"
    base = nearest_existing(path)
    if not base.is_dir():
        return f"cannot create {path}: {base} is a file, not a directory"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"cannot create {path}: {base} is not writable by this user"
    return ""


def check_dir(flag: str, path: str | Path, what: str) -> None:
    """OptionError naming ``flag`` when ``path`` cannot be the directory ``what`` describes."""
    problem = dir_problem(path)
    if problem:
        raise OptionError(f"{flag} {path}: {problem}; give a directory you can write ({what})")


def check_new_file(flag: str, path: str | Path) -> None:
    """OptionError naming ``flag`` when a file cannot be written at ``path``; nothing is created to find out."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OptionError(f"{flag} {path}: is a directory; give the path of the file to write")
    parent = Path(os.path.abspath(path)).parent
    if not parent.is_dir():
        missing = parent if not parent.exists() else f"{parent} (a file)"
        raise OptionError(f"{flag} {path}: its directory {missing} does not exist as a directory; create it first "
                          "or give another path")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OptionError(f"{flag} {path}: not writable by this user; give another path")


def check_bootstrap_out(out: str, holds_model: bool) -> None:
    """Refuse an --out the result cannot be saved to, before minutes of training ("": the shared cache).
    ``holds_model``: --out is the model's own directory (not a folder the data goes under), which a build replaces
    whole (diffusion, smollm2) or writes its files into (lm): one that holds anything but an earlier bootstrap is
    refused, so nothing of the user's is deleted or mixed in."""
    if not out:
        return check_cache()
    check_dir("--out", out, "the bootstrap saves its result there")
    path = Path(out).expanduser()
    if holds_model and path.is_dir() and any(path.iterdir()) and not (path / BOOTSTRAP_RECORD).is_file():
        raise OptionError(f"--out {path}: holds other files and no {BOOTSTRAP_RECORD} of an earlier `areal "
                          "bootstrap`: the model would be saved over them; give a new or empty directory")


def check_cache() -> None:
    """Refuse a cache directory that cannot take what a bootstrap builds (the root every kind caches under)."""
    root = Path(os.environ.get("AREAL_CACHE", Path.home() / ".cache" / "areal"))
    problem = dir_problem(root)
    if problem:
        raise OptionError(f"the cache {root} ($AREAL_CACHE, default ~/.cache/areal): {problem}; set AREAL_CACHE to "
                          "a directory you can write, or pass --out")
