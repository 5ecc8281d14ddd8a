"""One retrain leader among replicas (`serving.leader`): the file lock of the SQLite default."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from serving.leader import FileLeaderLock, leader_lock
from serving.store import Store

HOLD = """
import fcntl, sys, time
handle = open(sys.argv[1], "ab")
fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)
"""


def test_only_one_holder_at_a_time_and_release_hands_it_over(tmp_path: Path) -> None:
    first, second = FileLeaderLock(tmp_path / "r.lock"), FileLeaderLock(tmp_path / "r.lock")

    assert first.try_acquire()
    assert first.held
    assert not second.try_acquire(), "a second replica does not lead while the first does"
    first.release()
    assert not first.held
    assert second.try_acquire()
    second.release()


def test_a_leader_that_dies_releases_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "r.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        waiting = FileLeaderLock(path)
        assert not waiting.try_acquire()
        holder.kill()
        holder.wait(10)
        deadline = time.monotonic() + 10
        while not waiting.try_acquire():
            assert time.monotonic() < deadline, "the lock was not released when its holder died"
            time.sleep(0.05)
        waiting.release()
    finally:
        if holder.poll() is None:
            holder.kill()


def test_sqlite_replicas_share_the_lock_next_to_their_database(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db' / 'hitl.db'}")
    lock = leader_lock(store.engine, "retrain", tmp_path / "elsewhere")
    assert isinstance(lock, FileLeaderLock)
    assert lock.path == (tmp_path / "db" / "retrain.leader.lock").resolve()
    store.close()
