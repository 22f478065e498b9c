"""Live ingestion: Slack `message` events (new, edited, deleted) applied to the store as they
happen, with the same checks, drop rules and normalisation as the importer and the exporter.

Slack is told "received" before the listener runs, so an event that cannot be written (the
database locked by a long import, say) must not be lost: it is retried with backoff, and what
still fails waits in a spool file (`MIMIC_DATA_DIR/pending-events.jsonl`), applied in order
before the next event and at the start of the next export.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from mimic.core.ids import is_slack_id
from mimic.core.store import Channel, Message, Store, User
from mimic.exporter.messages import BadEntry, channel_row, drop_reason, malformed, message_row

log = logging.getLogger(__name__)

_USER_IDS = re.compile(r"<@([UW][A-Z0-9]+)")
_CHANNEL_IDS = re.compile(r"<#([CG][A-Z0-9]+)")
RETRIES = 3  # tries after the first, waiting BACKOFF_S, then twice that, ...
BACKOFF_S = 0.5
SPOOL = "pending-events.jsonl"

ChannelInfo = Callable[[str], Mapping[str, Any]]


def apply_event(
    store: Store,
    event: Mapping[str, Any],
    *,
    allow: Callable[[str], bool] = lambda _name: True,
    channel_info: ChannelInfo | None = None,
) -> str:
    """Apply one message event; returns what happened ("stored", "edited", "deleted" or
    "ignored: why"). `channel_info(id)` fetches a channel the store has not seen yet.
    Database errors propagate (see `EventSpool.apply`)."""
    if event.get("channel_type") in ("im", "mpim"):
        return "ignored: direct message"
    channel_id = event.get("channel")
    if not is_slack_id(channel_id):
        return "ignored: no valid channel id"
    subtype = event.get("subtype")
    with store.session() as session:
        channel = session.get(Channel, channel_id)
        if channel is None:
            if channel_info is None:
                return "ignored: unknown channel"
            info = channel_info(channel_id)
            try:
                row = channel_row(info, private=bool(info.get("is_private")))
            except BadEntry as exc:
                return f"ignored: Slack's description of the channel {exc}"
            if row["id"] != channel_id:
                return "ignored: Slack described another channel"
            store.upsert_channels(session, [row])
            channel = session.get(Channel, channel_id)
            assert channel is not None
        if not allow(channel.name):
            return "ignored: channel not in MIMIC_CHANNELS"

        if subtype == "message_deleted":
            ts = event.get("deleted_ts") or (event.get("previous_message") or {}).get("ts")
            if not isinstance(ts, str):
                return "ignored: malformed event"
            found = session.execute(update(Message).where(
                Message.channel_id == channel_id, Message.ts == ts).values(deleted=True))
            return "deleted" if found.rowcount else "ignored: not stored"
        message = event.get("message") if subtype == "message_changed" else event
        if not isinstance(message, Mapping):
            return "ignored: malformed event"
        if problem := malformed(message):
            return f"ignored: the message {problem}"
        author = session.get(User, message.get("user") or "")
        reason = drop_reason(message, {author.id} if author and author.is_bot else set())
        if reason is None and author is not None and author.opted_out:
            reason = "opted out of mimic"
        if reason is not None:
            return f"ignored: {reason}"
        text = message["text"]
        users = {uid: name for uid, name in session.execute(
            select(User.id, User.name).where(User.id.in_(_USER_IDS.findall(text))))}
        channels = {cid: name for cid, name in session.execute(
            select(Channel.id, Channel.name).where(Channel.id.in_(_CHANNEL_IDS.findall(text))))}
        row = message_row(message, channel_id, users, channels)
        store.ensure_users(session, [row["user_id"]])
        written = store.upsert_messages(session, [row])
        if subtype == "message_changed":
            return "edited" if written else "ignored: no change"
        return "stored" if written else "ignored: already stored"


class EventSpool:
    """Events that could not be written yet, oldest first, in a JSON-lines file shared by
    every process on the data folder (an advisory file lock keeps their writes apart)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / SPOOL
        self.wait: Callable[[float], None] = time.sleep  # between retries
        self._lock = threading.Lock()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path.with_suffix(".lock"), "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            yield

    def pending(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash mid-append
                log.warning("dropped an unreadable line of %s", self.path)
        return events

    def _append(self, event: Mapping[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as spool:
            spool.write(json.dumps(event, ensure_ascii=False) + "\n")
            spool.flush()
            os.fsync(spool.fileno())

    def _keep(self, events: list[dict[str, Any]]) -> None:
        if not events:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events),
                       encoding="utf-8")
        os.replace(tmp, self.path)

    def replay(self, store: Store, **apply_kwargs: Any) -> int:
        """Apply spooled events in order, stopping at the first that still fails; returns
        how many were applied."""
        with self._locked():
            return self._replay(store, apply_kwargs)

    def _replay(self, store: Store, apply_kwargs: dict[str, Any]) -> int:
        events = self.pending()
        done = 0
        try:
            for event in events:
                apply_event(store, event, **apply_kwargs)
                done += 1
        except OperationalError as exc:
            log.warning("%d spooled events still wait for the database: %s",
                        len(events) - done, exc.orig)
        if done:
            self._keep(events[done:])
        return done

    def apply(self, store: Store, event: Mapping[str, Any], *, retries: int = RETRIES,
              backoff_s: float = BACKOFF_S, **apply_kwargs: Any) -> str:
        """`apply_event`, never losing the event. One that meets a database error goes to the
        spool at once, and so does every event after it while the spool is not empty (order
        matters: a delete must not overtake its message); the spool is then retried with
        backoff, and what still fails waits for the next event or export."""
        with self._locked():
            if not self.path.exists():
                try:
                    return apply_event(store, event, **apply_kwargs)
                except OperationalError as exc:
                    log.warning("database busy, retrying a %s event: %s",
                                event.get("subtype") or "message", exc.orig)
            self._append(event)
            self._replay(store, apply_kwargs)
            if not self.path.exists():
                return "applied with the events spooled before it"
        for attempt in range(retries):
            self.wait(backoff_s * 2**attempt)
            with self._locked():
                self._replay(store, apply_kwargs)
                if not self.path.exists():
                    return f"applied after {attempt + 1} retries"
        return "spooled until the database is free (the next event or export applies it)"
