"""Locks shared by every mimic process of a deployment: the retrain lock (one export-and-train
run at a time, whoever starts it: the nightly job, an admin's `/mimic retrain`, `mimic train`
or `mimic retrain` on the shell) and the scheduler lock (one process runs the nightly job).

On SQLite, whose processes share one machine, they are file locks in the data folder. On
PostgreSQL they are session advisory locks, so replicas on several machines exclude each other
(a file lock on a network filesystem may not exclude at all). Either way a lock dies with its
holder: the OS drops a file lock, PostgreSQL an advisory lock when the connection closes, so a
crashed process never blocks the next.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from mimic.core.config import Settings

log = logging.getLogger(__name__)


class Busy(RuntimeError):
    """Another process (or thread) holds the lock."""


class Lock(Protocol):
    def acquire(self) -> bool:
        """Take the lock if it is free; never waits."""

    def held(self) -> bool:
        """Still ours: False once the connection that held it is gone."""

    def release(self) -> None:
        """Let go (a no-op when not held)."""


class FileLock:
    """flock on `path`: excludes processes and, through separate descriptors, threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None


@contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """flock on `path`, waited for (threads and processes on this machine take turns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key per lock name (advisory locks are per database, so two
    workspaces on one PostgreSQL server do not collide)."""
    return int.from_bytes(hashlib.sha256(f"mimic:{name}".encode()).digest()[:8], "big",
                          signed=True)


class AdvisoryLock:
    """A PostgreSQL session advisory lock on a connection of its own, outside any pool: a
    pooled connection handed back would keep the lock for whoever borrows it next."""

    def __init__(self, database_url: str, name: str) -> None:
        from sqlalchemy import create_engine

        url = make_url(database_url).set(drivername="postgresql+psycopg")
        # The server's keepalives (libpq's own only watch our side): a holder whose machine
        # vanished, not only its process, loses the lock within about a minute, not 2 hours.
        # Our side gives up on a silent server within 30 s, so held() never hangs for long.
        self._engine = create_engine(url, poolclass=NullPool, connect_args={
            "connect_timeout": 10, "tcp_user_timeout": 30_000,
            "keepalives": 1, "keepalives_idle": 20, "keepalives_interval": 5,
            "keepalives_count": 3, "application_name": f"mimic {name} lock",
            "options": "-c tcp_keepalives_idle=20 -c tcp_keepalives_interval=5 "
                       "-c tcp_keepalives_count=3"})
        self.key = advisory_key(name)
        self._conn: Connection | None = None
        self._held = False

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self._conn

    def acquire(self) -> bool:
        if self.held():
            return True
        try:
            self._held = bool(self._connection().scalar(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}))
        except Exception:
            self._drop()
            raise
        return self._held

    def held(self) -> bool:
        if not self._held or self._conn is None:
            return False
        try:  # the lock lives exactly as long as the session that took it
            self._conn.scalar(text("SELECT 1"))
        except Exception:  # noqa: BLE001 - any failure means the session (and lock) is gone
            log.warning("lost the connection holding the %s lock", self.key)
            self._drop()
        return self._held

    def release(self) -> None:
        if self._held and self._conn is not None:
            try:
                self._conn.scalar(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            except Exception:  # noqa: BLE001 - closing the session below frees it anyway
                log.warning("could not unlock %s; closing its connection instead", self.key)
        self._drop()
        self._engine.dispose()

    def _drop(self) -> None:
        self._held = False
        if self._conn is not None:
            with contextlib.suppress(Exception):  # already broken
                self._conn.close()
            self._conn = None


def named_lock(settings: Settings, name: str) -> Lock:
    """The lock called `name` for this deployment's database."""
    if make_url(settings.database_url).get_backend_name() == "postgresql":
        return AdvisoryLock(settings.database_url, name)
    return FileLock(settings.data_dir / f"{name}.lock")


# How often a held retrain lock is checked while its run goes on.
CHECK_HELD_S = 5.0


@contextmanager
def retrain_lock(settings: Settings, on_lost: Callable[[], None] | None = None
                 ) -> Iterator[None]:
    """Hold the retrain lock for the block, or raise Busy at once. With `on_lost`, a thread
    checks every CHECK_HELD_S that the lock is still held (an advisory lock goes with its
    connection) and calls it once if not: the block must then stop what it does."""
    lock = named_lock(settings, "retrain")
    done = threading.Event()
    watch: threading.Thread | None = None

    def check() -> None:
        while not done.wait(CHECK_HELD_S):
            if not lock.held():
                assert on_lost is not None
                on_lost()
                return

    try:
        if not lock.acquire():
            raise Busy("A retraining run is already going; wait for it to finish.")
        if on_lost is not None:
            watch = threading.Thread(target=check, name="mimic-lock-watch")
            watch.start()
        yield
    finally:
        done.set()
        if watch is not None:
            watch.join()
        lock.release()
