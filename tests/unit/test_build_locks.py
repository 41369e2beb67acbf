"""A learner killed while DeepSpeed JIT-builds an op must not make every later learner wait forever on its lock."""

import os
import time

from learners.deepspeed_setup import remove_stale_build_locks


def make_lock(root, op, age_s):
    lock = root / "py311_cpu" / op / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    past = time.time() - age_s
    os.utime(lock, (past, past))
    return lock


def test_a_lock_older_than_any_build_is_removed_and_a_live_builds_lock_is_kept(tmp_path):
    stale = make_lock(tmp_path, "deepspeed_shm_comm", age_s=3600)
    live = make_lock(tmp_path, "cpu_adam", age_s=5)

    assert remove_stale_build_locks(tmp_path, max_age_s=600) == [stale]
    assert not stale.exists() and live.exists()
    assert (tmp_path / "py311_cpu" / "deepspeed_shm_comm").is_dir()  # the build itself is left alone


def test_no_extensions_built_yet_is_fine(tmp_path):
    assert remove_stale_build_locks(tmp_path / "missing") == []
