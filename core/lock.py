"""The retrain lock: one export-and-train run at a time, whoever starts it (the nightly job,
an admin's `/mimic retrain`, or `mimic retrain` on the shell, in any process)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Busy(RuntimeError):
    """Another run holds the lock."""


@contextmanager
def retrain_lock(data_dir: Path) -> Iterator[None]:
    """Hold the lock for the block, or raise Busy at once. The OS drops it if the process dies,
    so a crashed run never blocks the next one."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "retrain.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy("A retraining run is already going; wait for it to finish.") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock
