"""Live ingestion: Slack `message` events (new, edited, deleted) applied to the store as they
happen, with the same drop rules and normalisation as the importer and the exporter."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import select, update

from exporter.messages import channel_row, drop_reason, message_row
from mimic.store import Channel, Message, Store, User

_USER_IDS = re.compile(r"<@([UW][A-Z0-9]+)")
_CHANNEL_IDS = re.compile(r"<#([CG][A-Z0-9]+)")


def apply_event(
    store: Store,
    event: Mapping[str, Any],
    *,
    allow: Callable[[str], bool] = lambda _name: True,
    channel_info: Callable[[str], Mapping[str, Any]] | None = None,
) -> str:
    """Apply one message event; returns what happened ("stored", "edited", "deleted" or
    "ignored: why"). `channel_info(id)` fetches a channel the store has not seen yet."""
    if event.get("channel_type") in ("im", "mpim"):
        return "ignored: direct message"
    channel_id = str(event.get("channel") or "")
    subtype = event.get("subtype")
    with store.session() as session:
        channel = session.get(Channel, channel_id)
        if channel is None:
            if channel_info is None:
                return "ignored: unknown channel"
            info = channel_info(channel_id)
            row = channel_row(info, private=bool(info.get("is_private")))
            store.upsert_channels(session, [row])
            channel = session.get(Channel, channel_id)
            assert channel is not None
        if not allow(channel.name):
            return "ignored: channel not in MIMIC_CHANNELS"

        if subtype == "message_deleted":
            ts = event.get("deleted_ts") or (event.get("previous_message") or {}).get("ts")
            found = session.execute(update(Message).where(
                Message.channel_id == channel_id, Message.ts == str(ts)).values(deleted=True))
            return "deleted" if found.rowcount else "ignored: not stored"
        message = event.get("message") if subtype == "message_changed" else event
        if not isinstance(message, Mapping):
            return "ignored: malformed event"
        author = session.get(User, str(message.get("user") or ""))
        reason = drop_reason(message, {author.id} if author and author.is_bot else set())
        if reason is not None:
            return f"ignored: {reason}"
        text = str(message.get("text") or "")
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
