"""Complete training-state checkpoints: verifiable, atomic, and never unpickled.

Layout of ``<out_dir>/checkpoints/step-00000040/``::

    model/                     Hugging Face directory (safetensors + config + tokenizer), rank 0
    learner/rank-000.safetensors   that rank's optimizer, LR-scheduler and RNG tensors
    learner/rank-000.json          the same state's non-tensor skeleton (plain JSON)
    manifest.json              step, policy version, run state, world size, sha256 of every file

Ranks write into a hidden staging directory; rank 0 writes the manifest last
and renames the directory into place, so a directory named ``step-*`` is
complete unless its bytes changed later, which the digests catch. Loading
verifies the manifest and every digest before reading anything and reads
tensors with safetensors and structure with ``json``: no pickle anywhere, so
a checkpoint from an untrusted source cannot run code.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMAT = "areal-checkpoint-v1"
_STEP_DIR = re.compile(r"^step-(\d{8})$")
REQUIRED_META = ("step", "version", "learner_workers")  # what resuming reads from every manifest


class CheckpointError(RuntimeError):
    """A checkpoint that is partial, corrupted or does not fit this run."""


# -- nested state <-> (tensors, JSON skeleton) ----------------------------------------------------
def pack_state(tree: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split nested dicts/lists/tuples of tensors, arrays and JSON scalars into safetensors + JSON.

    Anything else (an arbitrary object) is refused with its path, rather than pickled.
    """
    tensors: dict[str, torch.Tensor] = {}

    def encode(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[path] = node.detach().cpu().contiguous().clone()
            return {"__tensor__": path}
        if isinstance(node, np.ndarray):
            tensors[path] = torch.from_numpy(np.ascontiguousarray(node).copy())
            return {"__ndarray__": path}
        if isinstance(node, dict):
            return {"__dict__": [[encode(k, f"{path}.k{i}"), encode(v, f"{path}.{k}")]
                                 for i, (k, v) in enumerate(node.items())]}
        if isinstance(node, (list, tuple)):
            items = [encode(v, f"{path}.{i}") for i, v in enumerate(node)]
            return {"__tuple__": items} if isinstance(node, tuple) else items
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, np.generic):
            return node.item()
        raise CheckpointError(f"cannot checkpoint {path or 'state'}: a {type(node).__name__} is not a tensor, "
                              "array, container or JSON scalar")

    return tensors, encode(tree, "")


def unpack_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of ``pack_state``."""
    if isinstance(skeleton, list):
        return [unpack_state(v, tensors) for v in skeleton]
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__ndarray__" in skeleton:
            return tensors[skeleton["__ndarray__"]].numpy()
        if "__tuple__" in skeleton:
            return tuple(unpack_state(v, tensors) for v in skeleton["__tuple__"])
        return {unpack_state(k, tensors): unpack_state(v, tensors) for k, v in skeleton["__dict__"]}
    return skeleton


def write_state(directory: Path, name: str, state: Any) -> list[Path]:
    """``name.safetensors`` + ``name.json`` in ``directory``; returns both paths (``commit`` fsyncs them)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors, skeleton = pack_state(state)
    save_file(tensors, str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(json.dumps(skeleton))
    return [directory / f"{name}.safetensors", directory / f"{name}.json"]


# -- durability ------------------------------------------------------------------------------------
def fsync_paths(paths: list[Path]) -> None:
    """Flush files (and then their directories) to stable storage: after a power loss or node crash, a
    committed checkpoint's manifest must not point at bytes that never reached the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for directory in sorted({Path(p).parent for p in paths}):
        fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    """Make the names in ``directory`` (files created or renamed there) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the OS or
    the filesystem does not support it."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def replace_dir(new: Path, final: Path) -> None:
    """Put directory ``new`` at ``final``, which may exist. A reader always finds one complete copy at
    ``final``: the two are swapped atomically where the filesystem can, and the old copy deleted after."""
    if not final.exists():
        new.rename(final)
        return
    if exchange_paths(new, final):
        shutil.rmtree(new)  # now holds the old copy
        return
    # no atomic swap (e.g. NFS): the old copy steps aside under a hidden name for the instant between
    # the two renames, rather than being deleted before the new one is in place
    aside = final.with_name(f".replaced-{final.name}-{uuid.uuid4().hex[:8]}")
    final.rename(aside)
    new.rename(final)
    shutil.rmtree(aside)


def read_state(directory: Path, name: str) -> Any:
    tensors = load_file(str(directory / f"{name}.safetensors"))
    return unpack_state(json.loads((directory / f"{name}.json").read_text()), tensors)


# -- the store --------------------------------------------------------------------------------------
def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digests(root: Path, paths: list[Path]) -> dict[str, str]:
    """{path relative to ``root``: sha256} for the files a rank wrote."""
    return {str(p.relative_to(root)): sha256(p) for p in paths}


class CheckpointStore:
    """The ``step-*`` checkpoints under one directory: stage, commit, verify, find the newest good one."""

    def __init__(self, root: str | Path, keep_last: int = 2):
        if keep_last < 1:
            raise ValueError(f"checkpoint.keep_last must be >= 1, got {keep_last}")
        self.root, self.keep_last = Path(root), keep_last

    def staging_dir(self, step: int) -> Path:
        """A fresh hidden directory that every rank of one save writes into."""
        return self.root / f".staging-step-{step:08d}-{uuid.uuid4().hex[:8]}"

    def commit(self, staging: Path, files: dict[str, str], meta: dict, extra: dict[str, bytes] | None = None) -> Path:
        """Write ``extra`` files (name -> bytes, e.g. the controller's state), the manifest, fsync, rename
        ``staging`` to ``step-*``, prune; returns the final path."""
        final = self.root / f"step-{int(meta['step']):08d}"
        files = dict(files)
        for name, data in (extra or {}).items():
            if "/" in name or name.startswith(".") or name == MANIFEST:
                raise CheckpointError(f"refusing extra checkpoint file name {name!r}")
            with open(staging / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            files[name] = sha256(staging / name)
        # commit order, not step order, decides what pruning keeps (a resumed run commits lower steps again)
        manifest = {"format": FORMAT, **meta, "committed_ns": time.time_ns(), "files": dict(sorted(files.items()))}
        with open(staging / MANIFEST, "w") as fh:
            json.dump(manifest, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_paths([staging / rel for rel in files])  # every rank's files, wherever it wrote them from
        fsync_dir(staging)
        replace_dir(staging, final)  # the same step saved again (e.g. a resumed run) is replaced whole
        fsync_dir(self.root)
        self.prune(keep=final)
        return final

    def steps(self) -> list[Path]:
        """Committed checkpoint directories, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))

    def committed_order(self) -> list[Path]:
        """Committed checkpoint directories, the earliest commit first (a directory without a readable manifest
        first of all); checkpoints of older versions, which record no commit time, by their manifest's mtime."""
        def when(path: Path) -> tuple[int, int]:
            try:
                manifest = json.loads((path / MANIFEST).read_text())
                return 1, int(manifest.get("committed_ns") or (path / MANIFEST).stat().st_mtime_ns)
            except (OSError, ValueError, AttributeError):
                return 0, 0
        return sorted(self.steps(), key=lambda p: (*when(p), p.name))

    def prune(self, keep: Path | None = None) -> None:
        """Delete all but the ``keep_last`` newest commits; ``keep`` (the checkpoint just committed) always stays."""
        order = [p for p in self.committed_order() if p != keep]
        for old in order[: max(0, len(order) - (self.keep_last - (keep is not None)))]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob(".staging-step-*"):  # saves that died before committing
            if stale.is_dir() and not any(stale.samefile(p) for p in self.steps()):
                shutil.rmtree(stale, ignore_errors=True)
        for aside in self.root.glob(".replaced-step-*"):  # a re-save that died between its two renames
            step_dir = self.root / aside.name.split("-", 1)[1].rsplit("-", 1)[0]
            if step_dir.is_dir():  # the new copy made it: the old one is garbage (else keep it for a human)
                shutil.rmtree(aside, ignore_errors=True)

    @staticmethod
    def verify(path: str | Path) -> dict:
        """The manifest of a complete, unmodified checkpoint; CheckpointError naming the problem otherwise."""
        path = Path(path)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no {MANIFEST}; the save did not finish (partial checkpoint)") from None
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}/{MANIFEST} is not valid JSON ({exc}); corrupted checkpoint") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise CheckpointError(f"{path}: format {found!r}, expected {FORMAT!r}")
        files = manifest.get("files")
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise CheckpointError(f"{path}/{MANIFEST} has no valid file list ('files'); corrupted checkpoint")
        for key in REQUIRED_META:
            if key not in manifest:
                raise CheckpointError(f"{path}/{MANIFEST} lacks {key!r}; corrupted checkpoint")
        for rel, expected in files.items():
            file = path / rel
            if not file.is_file():
                raise CheckpointError(f"{path}: {rel} listed in the manifest is missing (partial checkpoint)")
            if sha256(file) != expected:
                raise CheckpointError(f"{path}: {rel} does not match its sha256 in the manifest (corrupted)")
        return manifest

    def set_aside(self, after_step: int) -> list[Path]:
        """Move the checkpoints of steps after ``after_step`` into ``abandoned-<time>/``: a run that resumes an
        earlier step of its own out_dir (a rollback, or past a checkpoint that failed to verify) leaves that
        timeline, which a later resume or learner recovery must not restore. Returns where they went."""
        later = [p for p in self.steps() if int(_STEP_DIR.match(p.name).group(1)) > after_step]
        if not later:
            return []
        aside = self.root / f"abandoned-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
        aside.mkdir()
        moved = []
        for path in later:
            path.rename(aside / path.name)
            moved.append(aside / path.name)
        fsync_dir(self.root)
        return moved

    def latest_valid(self) -> tuple[Path, dict] | None:
        """The newest checkpoint that verifies; refused ones are logged with why and skipped."""
        for path in reversed(self.steps()):
            try:
                return path, self.verify(path)
            except CheckpointError as exc:
                log.error("refusing checkpoint: %s; trying the previous one", exc)
        return None
