"""The store's exact state: its SQLite file's bytes (after folding the WAL in) and its dump."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from mimic.core.store import Store


def fingerprint(store: Store) -> tuple[str, list[str]]:
    """(sha256 of the database file, its SQL dump): equal before and after means nothing
    changed, not a row, not an index. Closes the store's connections first."""
    path = Path(store.engine.url.database or "")
    store.engine.dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        dump = list(conn.iterdump())
    conn.close()
    return hashlib.sha256(path.read_bytes()).hexdigest(), dump
