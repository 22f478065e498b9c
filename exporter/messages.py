"""What counts as a person's writing, and the normalised text kept for training.

Shared by the export-ZIP importer, the Web API exporter and the bot's live ingestion, so a
message is judged the same way whichever road it came in by.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any

# Subtypes that carry a person's own words; everything else is the system talking.
KEPT_SUBTYPES = frozenset({None, "thread_broadcast", "file_share", "me_message"})

_MARKUP = re.compile(r"<([^<>]*)>")


def drop_reason(message: Mapping[str, Any], bot_users: set[str] | frozenset[str]) -> str | None:
    """Why a message is not a person's writing, or None to keep it."""
    # Fast path: most messages are plain posts by people (this runs on every imported row).
    if "subtype" not in message and "bot_id" not in message and message.get("type") == "message":
        user, text = message.get("user"), message.get("text")
        if user and user not in bot_users and isinstance(text, str) and text.strip():
            return None
    if message.get("type", "message") != "message":
        return "not a message"
    subtype = message.get("subtype")
    if message.get("bot_id") or subtype == "bot_message":
        return "bot"
    if subtype not in KEPT_SUBTYPES:
        return f"subtype {subtype}"
    user = message.get("user")
    if not user:
        return "no author"
    if user in bot_users:
        return "bot"
    if not str(message.get("text") or "").strip():
        return "empty"
    return None


def normalise(text: str, users: Mapping[str, str], channels: Mapping[str, str]) -> str:
    """Slack markup to the plain text a person sees: `<@U1|bob>` → `@bob`, `<url|x>` → `x`.

    `users` and `channels` map ids to names, for markup that carries no label.
    """

    def plain(match: re.Match[str]) -> str:
        body = match.group(1)
        target, _, label = body.partition("|")
        if target.startswith("@"):
            return "@" + (users.get(target[1:]) or label or target[1:])
        if target.startswith("#"):
            return "#" + (channels.get(target[1:]) or label or target[1:])
        if target.startswith("!"):
            special = target[1:]
            if special.startswith("subteam^"):
                return label if label.startswith("@") else "@" + (label or "team")
            if special in ("here", "channel", "everyone"):
                return "@" + special
            return label or ""  # <!date^...|fallback> and other commands show their fallback
        return label or target

    return html.unescape(_MARKUP.sub(plain, text)) if "<" in text or "&" in text else text


def edited_ts(message: Mapping[str, Any]) -> str | None:
    edited = message.get("edited")
    if edited is None:
        return None
    return str(edited["ts"]) if isinstance(edited, Mapping) and edited.get("ts") else None


def message_row(
    message: Mapping[str, Any],
    channel_id: str,
    users: Mapping[str, str],
    channels: Mapping[str, str],
) -> dict[str, Any]:
    """The store row for a kept message (see `mimic.store.Message`)."""
    raw = str(message["text"])
    thread_ts = message.get("thread_ts")
    return {
        "channel_id": channel_id,
        "ts": str(message["ts"]),
        "user_id": str(message["user"]),
        "text_raw": raw,
        "text": normalise(raw, users, channels),
        "thread_ts": str(thread_ts) if thread_ts else None,
        "subtype": message.get("subtype"),
        "edited_ts": edited_ts(message),
        "deleted": False,
    }


def user_row(user: Mapping[str, Any]) -> dict[str, Any]:
    """The store row for a `users.json` / `users.list` entry."""
    profile = user.get("profile") or {}
    return {
        "id": str(user["id"]),
        "name": str(user.get("name") or user["id"]),
        "display_name": str(profile.get("display_name") or ""),
        "real_name": str(user.get("real_name") or profile.get("real_name") or ""),
        "is_bot": bool(user.get("is_bot") or user.get("is_app_user"))
        or user.get("id") == "USLACKBOT",
        "deleted": bool(user.get("deleted")),
        "opted_out": False,
    }


def channel_row(channel: Mapping[str, Any], *, private: bool, dm: bool = False) -> dict[str, Any]:
    """The store row for a `channels.json` / `groups.json` / `conversations.list` entry."""
    return {
        "id": str(channel["id"]),
        "name": str(channel.get("name") or channel["id"]),
        "is_private": private or bool(channel.get("is_private")) or dm,
        "is_archived": bool(channel.get("is_archived")),
        "is_dm": dm,
    }
