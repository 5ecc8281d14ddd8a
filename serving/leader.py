"""One leader among serving replicas, for the work that must run once: the retrain worker.

Every replica runs the same app; only the one holding the lock trains. The lock is held by something
the operating system or the database releases when its holder dies, so another replica takes over at
its next try, without a timeout to tune:

- on PostgreSQL, a session-level advisory lock (`pg_try_advisory_lock`) on a connection kept open by the
  leader; a dead leader's connection closes and the lock goes with it;
- on SQLite (replicas on one machine, the embedded default), an exclusive `flock` on a file next to the
  database; a dead leader's file descriptor closes and the lock goes with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

logger = logging.getLogger(__name__)


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for `name` (advisory locks are keyed by bigint)."""
    return int.from_bytes(hashlib.sha256(f"hitl:{name}".encode()).digest()[:8], "big", signed=True)


class LeaderLock(Protocol):
    """Try to become the leader; stay leader while `held`; `release` on shutdown."""

    @property
    def held(self) -> bool: ...

    def try_acquire(self) -> bool: ...

    def release(self) -> None: ...


class FileLeaderLock:
    """An exclusive, non-blocking `flock` on `path`, held while the file stays open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def try_acquire(self) -> bool:
        if self._file is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        self._file = handle
        return True

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class PostgresLeaderLock:
    """A session-level advisory lock on a connection of its own, held while that connection lives."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.key = lock_key(name)
        self._connection: Connection | None = None

    @property
    def held(self) -> bool:
        if self._connection is None:
            return False
        try:  # a leader whose connection broke (database restart, network) is no longer the leader
            self._connection.execute(text("SELECT 1"))
            # Ended at once: a connection left "idle in transaction" is what a server's
            # idle_in_transaction_session_timeout kills, and the lock would go with it.
            self._connection.commit()
        except DBAPIError:
            logger.warning("leader lock %d: its connection broke; leadership lost", self.key)
            self._drop()
            return False
        return True

    def try_acquire(self) -> bool:
        if self.held:
            return True
        connection = self.engine.connect()
        try:
            got = bool(connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar())
            connection.commit()  # the lock is session-level: it outlives this transaction
        except DBAPIError:
            connection.close()
            raise
        if not got:
            connection.close()
            return False
        self._connection = connection
        return True

    def release(self) -> None:
        if self._connection is None:
            return
        try:
            self._connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            self._connection.commit()
        except DBAPIError:
            pass  # closing the connection below releases it anyway
        self._drop()

    def _drop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(DBAPIError):
                self._connection.close()
            self._connection = None


def leader_lock(engine: Engine, name: str, state_dir: Path) -> LeaderLock:
    """The lock that elects the `name` leader among the replicas sharing `engine`'s database: an
    advisory lock on PostgreSQL; on SQLite a file lock next to the database file (replicas share it
    there), else under `state_dir`."""
    if engine.dialect.name == "postgresql":
        return PostgresLeaderLock(engine, name)
    database = engine.url.database
    folder = Path(database).resolve().parent if database and database != ":memory:" else state_dir
    return FileLeaderLock(folder / f"{name}.leader.lock")
