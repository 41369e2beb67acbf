"""Staged weights never outlive their rollout actor: removed on close, at exit, or by the next actor."""

import asyncio
import os
import subprocess
import sys
from collections import namedtuple

import pytest

from rollouts import weight_staging
from rollouts.weight_staging import StagingSpaceError, WeightStaging, check_room


def test_a_staging_directory_names_its_process_and_is_removed_on_close(tmp_path):
    staging = WeightStaging(rank=3, root=tmp_path)
    assert staging.path.parent == tmp_path and f"areal-rollout3-pid{os.getpid()}-" in staging.path.name
    (staging.path / "v000001").mkdir()
    staging.remove()
    assert list(tmp_path.iterdir()) == []


def test_a_process_that_exits_takes_its_staging_directory_with_it(tmp_path):
    code = ("from rollouts.weight_staging import WeightStaging; "
            f"s = WeightStaging(0, {str(tmp_path)!r}); (s.path / 'model.safetensors').write_bytes(b'x' * 1000)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert list(tmp_path.iterdir()) == []


def test_a_new_actor_removes_directories_left_by_processes_that_died(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f"areal-rollout0-pid{dead.pid}-abc123"  # what SIGKILL (ray.kill) leaves behind
    (orphan / "v000007").mkdir(parents=True)
    alive = tmp_path / f"areal-rollout1-pid{os.getppid()}-def456"  # a live actor's: kept
    alive.mkdir()
    unrelated = tmp_path / "someone-elses-dir"
    unrelated.mkdir()
    staging = WeightStaging(rank=0, root=tmp_path)
    assert staging.orphans_removed == [orphan]
    assert not orphan.exists() and alive.exists() and unrelated.exists()
    staging.remove()


def test_weights_that_do_not_fit_fail_before_writing_and_say_how_much_is_needed(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(weight_staging.shutil, "disk_usage", lambda path: usage(2**31, 2**31 - 2**29, 2**29))
    check_room(tmp_path, 2**28, "weights version 1")  # fits
    with pytest.raises(StagingSpaceError) as err:
        check_room(tmp_path, 3 * 2**30, "weights version 2")
    assert "needs 3.00 GB" in str(err.value) and "0.50 GB free" in str(err.value)
    assert "rollout.staging_dir" in str(err.value)


def test_a_rollout_worker_checks_room_before_staging_a_version(tmp_path, monkeypatch):
    from rollouts.worker import RolloutWorker
    from tests.fakes import CharTokenizer, FakeEngine

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(weight_staging.shutil, "disk_usage", lambda path: usage(100, 90, 10))
    worker = RolloutWorker(FakeEngine({}, CharTokenizer().decode), None, tmp_path / "weights")
    with pytest.raises(StagingSpaceError, match="weights version 5"):
        asyncio.run(worker.load_weights({"model.safetensors": b"x" * 64}, version=5))
    assert not any((tmp_path / "weights").glob("**/*.safetensors"))
