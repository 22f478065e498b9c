"""What counts as a person's writing, and the normalised text kept for training.

Shared by the export-ZIP importer, the Web API exporter and the bot's live ingestion, so a
message is judged the same way whichever road it came in by.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any

from mimic.core.ids import is_slack_id

# Subtypes that carry a person's own words; everything else is the system talking.
KEPT_SUBTYPES = frozenset({None, "thread_broadcast", "file_share", "me_message"})
# Slack refuses messages longer than this; a longer one in an export is not a real message.
MAX_MESSAGE_CHARS = 40_000
TS = re.compile(r"\d{1,12}(\.\d{1,9})?")


def is_ts(value: object) -> bool:
    """A Slack timestamp ("1512085950.000216"), as text or as a plain number."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value >= 0 and value == value and value != float("inf")
    return isinstance(value, str) and TS.fullmatch(value) is not None


def unicode_problem(text: str) -> str | None:
    """Why `text` cannot be stored (a lone surrogate: JSON allows it, UTF-8 does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"has invalid Unicode ({exc.reason} at character {exc.start})"
    return None


def malformed(message: Mapping[str, Any]) -> str | None:
    """What is wrong with the fields mimic uses, or None: checked before anything else, on
    every road in, so that nothing later has to guess at types."""
    if not is_ts(message.get("ts")):
        return f"has no valid ts (found {message.get('ts')!r:.40})"
    for key in ("type", "subtype"):
        if message.get(key) is not None and not isinstance(message[key], str):
            return f"has a {key} that is {type(message[key]).__name__}, not text"
    user = message.get("user")
    if user is not None and not is_slack_id(user):
        what = type(user).__name__ if not isinstance(user, str) else f"{user[:40]!r}"
        return f"has a user that is not a Slack user id ({what})"
    text = message.get("text")
    if text is not None:
        if not isinstance(text, str):
            return f"has a text that is {type(text).__name__}, not a string"
        if problem := unicode_problem(text):
            return f"has a text that {problem}"
    if message.get("thread_ts") is not None and not is_ts(message["thread_ts"]):
        return f"has an invalid thread_ts ({message['thread_ts']!r:.40})"
    edited = message.get("edited")
    if edited is not None and not (isinstance(edited, Mapping)
                                   and (edited.get("ts") is None or is_ts(edited["ts"]))):
        return f"has an invalid edited.ts ({edited!r:.60})"
    return None

_MARKUP = re.compile(r"<([^<>]*)>")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def drop_reason(message: Mapping[str, Any], bot_users: set[str] | frozenset[str]) -> str | None:
    """Why a message is not a person's writing, or None to keep it. `malformed` has passed."""
    # Fast path: most messages are plain posts by people (this runs on every imported row).
    if "subtype" not in message and "bot_id" not in message and message.get("type") == "message":
        user, text = message.get("user"), message.get("text")
        if (user and user not in bot_users and isinstance(text, str) and text.strip()
                and len(text) <= MAX_MESSAGE_CHARS):
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
    if len(message["text"]) > MAX_MESSAGE_CHARS:
        return "longer than Slack allows"
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
    """The store row for a kept message (see `mimic.core.store.Message`)."""
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


class BadEntry(ValueError):
    """A user or channel entry that cannot be stored; the message ("has no id") says which
    field."""


def _name(entry: Mapping[str, Any], *keys: str, default: str = "") -> str:
    """The first of `keys` that is set, as storable text of at most 255 characters."""
    for key in keys:
        value = entry.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise BadEntry(f"has a {key} that is {type(value).__name__}, not text")
        if problem := unicode_problem(value):
            raise BadEntry(f"has a {key} that {problem}")
        # Names end up in the bot's headers: a newline there could start a line of its own.
        return _CONTROL.sub(" ", value)[:255]
    return default


def _entry_id(entry: Mapping[str, Any]) -> str:
    if entry.get("id") is None:
        raise BadEntry("has no id")
    if not is_slack_id(entry["id"]):
        raise BadEntry(f"has an id, {entry['id']!r:.40}, that is not a Slack id (capital "
                       "letters and digits)")
    return entry["id"]


def user_row(user: Mapping[str, Any]) -> dict[str, Any]:
    """The store row for a `users.json` / `users.list` entry (BadEntry if it has none)."""
    uid = _entry_id(user)
    profile = user.get("profile") or {}
    if not isinstance(profile, Mapping):
        raise BadEntry(f"has a profile that is {type(profile).__name__}, not an object")
    return {
        "id": uid,
        "name": _name(user, "name", default=uid),
        "display_name": _name(profile, "display_name"),
        "real_name": _name(user, "real_name") or _name(profile, "real_name"),
        "is_bot": bool(user.get("is_bot") or user.get("is_app_user"))
        or user.get("id") == "USLACKBOT",
        "deleted": bool(user.get("deleted")),
        "opted_out": False,
    }


def channel_row(channel: Mapping[str, Any], *, private: bool, dm: bool = False) -> dict[str, Any]:
    """The store row for a `channels.json` / `groups.json` / `conversations.list` entry
    (BadEntry if it has none)."""
    cid = _entry_id(channel)
    return {
        "id": cid,
        "name": _name(channel, "name", default=cid),
        "is_private": private or bool(channel.get("is_private")) or dm,
        "is_archived": bool(channel.get("is_archived")),
        "is_dm": dm,
    }
