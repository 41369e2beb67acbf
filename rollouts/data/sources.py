"""Where a dataset's rows come from: local files, a saved directory or a hub name, read with Hugging Face
``datasets`` into memory-mapped Arrow tables (never one Python object per row).

Each source stays its own ``Segment`` so that an error can name the file a bad row is in and its row number
there; ``concatenate`` joins them without copying.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
LOCAL_SUFFIXES = (*BUILDERS, ".arrow")
HUB_PROBE_S = 3.0  # how long a hub name waits to learn whether the hub answers before failing as offline


class DatasetSourceError(ValueError):
    """A source that cannot be read: the message names the config key, the source and the fix."""


@dataclass(frozen=True)
class Segment:
    """The rows of one source: ``name`` (a file or a hub name) and its ``datasets.Dataset``."""

    name: str
    rows: Any  # datasets.Dataset

    def __len__(self) -> int:
        return len(self.rows)


def quiet_datasets() -> None:
    """No progress bars, per-file info lines or error lines from ``datasets`` on the console: a source that fails
    to load raises, and the DatasetSourceError made of it says the same in one line that names the key."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL)
    logging.getLogger("datasets").setLevel(logging.CRITICAL)


def source_list(path: Any) -> list[str]:
    """``task.path`` as a list of sources ("" -> [])."""
    if path in ("", None):
        return []
    return [str(p) for p in path] if isinstance(path, (list, tuple)) else [str(path)]


def load_segments(path: Any, split: str, key: str) -> list[Segment]:
    """One segment per source of ``path`` (``key`` names the config key in errors)."""
    return [load_segment(source, split, key) for source in source_list(path)]


def load_segment(source: str, split: str, key: str) -> Segment:
    """Read one source: a local file by its suffix, a ``save_to_disk`` directory, or a name on the hub."""
    quiet_datasets()
    local = Path(source).expanduser()
    if local.is_dir():
        return Segment(str(local), _load_saved(local, split, key))
    if local.suffix.lower() in LOCAL_SUFFIXES or local.exists() or source.startswith((".", "/", "~")):
        if not local.is_file():
            raise DatasetSourceError(f"{key} = {source!r}: no such file (a .parquet, .jsonl, .json, .csv or .arrow "
                                     "file, a directory written by Dataset.save_to_disk, or a dataset name)")
        return Segment(str(local), _load_file(local, key))
    return Segment(source, _load_hub(source, split, key))


def _load_file(path: Path, key: str):
    import datasets

    suffix = path.suffix.lower()
    try:
        if suffix == ".arrow":
            return datasets.Dataset.from_file(str(path))  # memory-mapped as it is, no copy
        if suffix not in BUILDERS:
            raise DatasetSourceError(f"{key} = {str(path)!r}: unknown file type {suffix or '(none)'}; use .parquet, "
                                     ".jsonl, .json, .csv or .arrow")
        return datasets.load_dataset(BUILDERS[suffix], data_files=str(path), split="train")
    except DatasetSourceError:
        raise
    except Exception as exc:  # a malformed file: pyarrow's and datasets' errors say what they found
        raise DatasetSourceError(f"{key} = {str(path)!r}: cannot read it as {suffix[1:]} ({type(exc).__name__}: "
                                 f"{_first_line(exc)})") from None


def _load_saved(path: Path, split: str, key: str):
    import datasets

    if not (path / "state.json").exists() and not (path / "dataset_dict.json").exists():
        raise DatasetSourceError(f"{key} = {str(path)!r} is a directory but not one written by Dataset.save_to_disk "
                                 "(no state.json or dataset_dict.json); name the data files instead")
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DatasetSourceError(f"{key} = {str(path)!r} has splits {sorted(loaded)}, not {split!r}: set the "
                                     "split key (task.split / task.eval_split)")
        return loaded[split]
    return loaded


def _load_hub(name: str, split: str, key: str):
    import datasets
    import huggingface_hub.constants

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    offline = os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "True") or \
        os.environ.get("HF_DATASETS_OFFLINE", "") in ("1", "true", "True") or not _reachable(endpoint)
    fix = (f"{key} = {name!r} is not a local file or directory, and it cannot be loaded from the Hugging Face Hub "
           f"{'(offline: no network, or HF_HUB_OFFLINE=1)' if offline else ''}: on a machine with network run "
           f"datasets.load_dataset({name!r}).save_to_disk(DIR) and pass DIR, or pass a local .parquet/.jsonl file")
    if offline:  # a cached copy still loads; without this, each request retries for ~20 s before failing
        datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as exc:
        raise DatasetSourceError(f"{fix} ({type(exc).__name__}: {_first_line(exc)})") from None


def _reachable(url: str) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=HUB_PROBE_S).close()
        return True
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def source_digest(segments: list[Segment]) -> str:
    """A digest of the bytes of every local source (a hub dataset: its name and fingerprint): what a run's
    checkpoints record, so resuming on changed data fails naming it."""
    h = hashlib.sha256()
    for segment in segments:
        files = _files_of(segment)
        if not files:
            h.update(f"{segment.name}:{segment.rows._fingerprint}".encode())
        for file in files:
            with open(file, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
    return h.hexdigest()[:16]


def _files_of(segment: Segment) -> list[str]:
    path = Path(segment.name)
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*") if p.is_file())
    return []
