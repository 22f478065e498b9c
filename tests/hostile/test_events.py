"""Live message events against a database that is locked (a long import holds it), and events
that are malformed or hostile: nothing Slack was told "received" is lost or half-applied."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mimic.core.config import Settings
from mimic.core.store import Message, Store, make_engine
from mimic.exporter.importer import import_export
from mimic.exporter.live import EventSpool, apply_event
from mimic.exporter.webapi import export_workspace
from mimic.trainer.privacy import opt_out
from tests.fake_slack import TOKEN, FakeSlack
from tests.hostile.store_bytes import fingerprint
from tests.slack_export import write_export


@pytest.fixture
def quick(store: Store, tmp_path: Path) -> Iterator[Store]:
    """The hand-built workspace, on an engine that gives up on a lock after 50 ms (30 s in
    production), so that a locked database shows at once."""
    import_export(store, write_export(tmp_path / "export"))
    quick = Store(make_engine(str(store.engine.url), busy_timeout_s=0.05))
    yield quick
    quick.engine.dispose()


def event(ts: str, text: str = "hi", user: str = "U1", **extra: Any) -> dict[str, Any]:
    return {"type": "message", "channel": "C1", "channel_type": "channel", "user": user,
            "text": text, "ts": ts, **extra}


def deletion(ts: str) -> dict[str, Any]:
    return {"type": "message", "subtype": "message_deleted", "channel": "C1",
            "channel_type": "channel", "deleted_ts": ts}


def state(store: Store) -> dict[str, tuple[str, bool]]:
    with store.session() as s:
        return {m.ts: (m.text, m.deleted) for m in s.scalars(
            select(Message).where(Message.ts >= "1700000000"))}


def locked(store: Store) -> sqlite3.Connection:
    """Another process's long write transaction, as `mimic import` holds one."""
    conn = sqlite3.connect(store.engine.url.database or "", isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_events_wait_out_a_locked_database_in_order(quick: Store, tmp_path: Path) -> None:
    spool = EventSpool(tmp_path / "data")
    holder = locked(quick)
    assert spool.apply(quick, event("1700000000.000100", "while locked"), retries=2,
                       backoff_s=0.01).startswith("spooled")
    # Its deletion comes next: it must not overtake the message (it would find nothing).
    assert spool.apply(quick, deletion("1700000000.000100"), retries=0).startswith("spooled")
    assert [e.get("subtype") for e in spool.pending()] == [None, "message_deleted"]
    assert state(quick) == {}
    holder.rollback()
    holder.close()

    assert spool.apply(quick, event("1700000001.000100", "after")) == \
        "applied with the events spooled before it"
    assert state(quick) == {"1700000000.000100": ("while locked", True),
                            "1700000001.000100": ("after", False)}
    assert spool.pending() == [] and not spool.path.exists()


def test_a_retry_with_backoff_gets_through_once_the_lock_is_gone(quick: Store,
                                                                 tmp_path: Path) -> None:
    spool = EventSpool(tmp_path / "data")
    holder = locked(quick)
    released: list[float] = []

    def release(*_args: Any) -> None:  # the import commits while we back off
        if not released:
            holder.rollback()
            released.append(1)

    spool.wait = release
    result = spool.apply(quick, event("1700000002.000100", "patient"), retries=3)
    holder.close()
    assert result == "applied after 1 retries"
    assert state(quick)["1700000002.000100"] == ("patient", False)


def test_the_next_export_applies_what_waited(quick: Store, tmp_path: Path,
                                             fake_slack: FakeSlack) -> None:
    spool = EventSpool(tmp_path / "data")
    holder = locked(quick)
    spool.apply(quick, event("1700000003.000100", "left behind"), retries=0)
    holder.rollback()
    holder.close()
    fake_slack.add_user("U1", "alice")
    fake_slack.add_channel("C1", "general")
    settings = Settings(_env_file=None, SLACK_BOT_TOKEN=TOKEN, SLACK_API_URL=fake_slack.url,
                        MIMIC_DATA_DIR=str(tmp_path / "data"))
    summary = export_workspace(quick, settings)
    assert summary.replayed == 1 and not spool.path.exists()
    assert state(quick)["1700000003.000100"] == ("left behind", False)


@pytest.mark.parametrize(("payload", "why"), [
    (event("1700000004.000100", channel="C1/../../models"), "no valid channel id"),
    (event("1700000004.000100", user={"id": "U1"}), "not a Slack user id"),
    (event("1700000004.000100", user="U1/../victim"), "not a Slack user id"),
    (event("1700000004.000100", text={"rich": "text"}), "not a string"),
    (event("1700000004.000100", text="bad \ud800 text"), "invalid Unicode"),
    (event("1700000004.000100", edited={"ts": "soon"}), "invalid edited.ts"),
    (event("not-a-ts"), "no valid ts"),
    (event("1700000004.000100", text="x" * 40_001), "longer than Slack allows"),
    ({**deletion("1700000004.000100"), "deleted_ts": ["1"]}, "malformed event"),
    ({"type": "message", "subtype": "message_changed", "channel": "C1",
      "message": "not an object"}, "malformed event"),
])
def test_hostile_events_are_ignored_and_change_nothing(quick: Store, payload: dict[str, Any],
                                                       why: str) -> None:
    before = fingerprint(quick)
    result = apply_event(quick, payload)
    assert result.startswith("ignored") and why in result
    assert fingerprint(quick) == before


def test_an_opted_out_person_stays_forgotten(quick: Store, tmp_path: Path) -> None:
    opt_out(quick, tmp_path / "data", "U2", forget=True)
    assert apply_event(quick, event("1700000005.000100", "me again", user="U2")) == \
        "ignored: opted out of mimic"
    summary = import_export(quick, write_export(tmp_path / "again"))
    assert summary.dropped["opted out of mimic"] > 0
    with quick.session() as s:
        assert s.scalars(select(Message).where(Message.user_id == "U2")).all() == []
