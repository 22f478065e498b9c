"""Replies that live in conversations: what a reply reads before it (the messages before it in
its thread, or in its channel for a message that starts none), and posting it in the thread.

The messages are fetched from Slack (`conversations.replies` / `.history`) and cleaned the way
the importer cleans what the models learn from: no bots, no join notices, markup as people see
it, and nothing by a person who opted out (they are forgotten, here too). The channel is the
one the reply is posted in, so a private channel's messages are only ever read into a reply
inside it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from slack_sdk import WebClient
from sqlalchemy import bindparam, select

from mimic.core.config import Settings
from mimic.core.ids import is_slack_id
from mimic.core.inert import make_inert
from mimic.core.store import Channel, Store, User
from mimic.exporter.messages import drop_reason, is_ts, malformed, normalise
from mimic.trainer.sampler import CONTEXT_MESSAGES

log = logging.getLogger(__name__)

# A thread is read oldest first, a page at a time; past this many messages only the newest
# pages would matter, and a runaway thread must not cost a request many API calls.
MAX_THREAD_PAGES, PAGE = 5, 200
_MENTIONED = re.compile(r"<[@#]([A-Z0-9]+)")


def read_before(client: WebClient, store: Store, channel: str, *, until: str,
                thread_ts: str | None = None, inclusive: bool = False
                ) -> list[tuple[str, str]]:
    """The last CONTEXT_MESSAGES people's messages before ts `until` (and `until` itself when
    `inclusive`) in the thread `thread_ts`, or in the channel when there is no thread:
    (author id, plain text), oldest first."""
    if thread_ts:
        found: list[Mapping[str, Any]] = []
        cursor = None
        for _ in range(MAX_THREAD_PAGES):
            page = client.conversations_replies(channel=channel, ts=thread_ts, cursor=cursor,
                                                limit=PAGE)
            found += page.get("messages") or []
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                break
    else:
        found = list(reversed(client.conversations_history(
            channel=channel, latest=until, inclusive=inclusive,
            limit=CONTEXT_MESSAGES * 4).get("messages") or []))
    bound = float(until)
    kept = [m for m in found if isinstance(m, Mapping) and malformed(m) is None
            and drop_reason(m, frozenset()) is None and is_slack_id(m.get("user"))
            and (float(m["ts"]) < bound or (inclusive and float(m["ts"]) == bound))]
    return _cleaned(store, kept[-CONTEXT_MESSAGES * 2:])[-CONTEXT_MESSAGES:]


# Built once, read on the connection: every mention reads them (0.9-1.3 ms built each time
# and read through the ORM, 0.6 so; BENCHMARKS.md, fourteenth session).
_USERS = select(User.id, User.name, User.opted_out).where(
    User.id.in_(bindparam("ids", expanding=True)))
_CHANNELS = select(Channel.id, Channel.name).where(
    Channel.id.in_(bindparam("ids", expanding=True)))


def _cleaned(store: Store, messages: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(author, plain text) of the messages whose authors have not opted out."""
    ids = {m["user"] for m in messages} | {i for m in messages
                                           for i in _MENTIONED.findall(m["text"])}
    with store.session() as session:
        users = session.connection().execute(_USERS, {"ids": sorted(ids)}).all()
        channels = dict(session.connection().execute(_CHANNELS, {"ids": sorted(ids)}).all())
    names = {uid: name for uid, name, _out in users}
    gone = {uid for uid, _name, out in users if out}
    return [(m["user"], normalise(m["text"], names, channels)) for m in messages
            if m["user"] not in gone]


def thread_of(message: Mapping[str, Any]) -> str:
    """The thread a reply to `message` goes in: its own thread, or a new one under it."""
    thread_ts = message.get("thread_ts")
    return thread_ts if is_ts(thread_ts) else message["ts"]


PICK_PERSON = "mimic_pick_person"  # the modal of "Mimic a reply as…"


def pick_person_view(channel: str, message: Mapping[str, Any]) -> dict[str, Any]:
    """The modal that asks whose reply to a message to write; the message travels in the
    view's private_metadata (and is checked again when it comes back)."""
    where = {"channel": channel, "ts": message["ts"], "thread_ts": message.get("thread_ts")}
    return {"type": "modal", "callback_id": PICK_PERSON,
            "title": {"type": "plain_text", "text": "Mimic a reply"},
            "submit": {"type": "plain_text", "text": "Write it"},
            "close": {"type": "plain_text", "text": "Cancel"},
            "private_metadata": json.dumps(where),
            "blocks": [{"type": "input", "block_id": "person",
                        "label": {"type": "plain_text", "text": "Whose reply?"},
                        "element": {"type": "users_select", "action_id": "person"}}]}


def picked_person(body: Mapping[str, Any], view: Mapping[str, Any]
                  ) -> tuple[str, str, dict[str, Any], str] | None:
    """(clicker, channel, message, person picked) of a submitted PICK_PERSON modal, or None
    when anything in it is not what the modal sent."""
    try:
        where = json.loads(view["private_metadata"])
        person = view["state"]["values"]["person"]["person"]["selected_user"]
        user = body["user"]["id"]
        channel, ts, thread_ts = where["channel"], where["ts"], where.get("thread_ts")
    except (KeyError, TypeError, ValueError):
        return None
    if not (is_slack_id(user) and is_slack_id(channel) and is_slack_id(person) and is_ts(ts)
            and (thread_ts is None or is_ts(thread_ts))):
        return None
    return user, channel, {"ts": ts, "thread_ts": thread_ts}, person


def post_reply(client: WebClient, settings: Settings, channel: str, thread_ts: str,
               text: str, person: str | None = None) -> None:
    """Post `text` (already labelled and inert) in the thread. With MIMIC_POST_AS=name and a
    person's voice, under "<their name> (mimic)" and their avatar: the label in the text
    still says it is generated."""
    look: dict[str, str] = {}
    if settings.post_as == "name" and person is not None:
        look = _look_alike(client, person)
    client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=make_inert(text),
                            unfurl_links=False, unfurl_media=False, **look)


def _look_alike(client: WebClient, person: str) -> dict[str, str]:
    try:
        user = client.users_info(user=person)["user"]
    except Exception as exc:  # noqa: BLE001 - the reply still goes out, as mimic
        log.warning("users.info for %s failed (%s): posting as mimic", person, exc)
        return {}
    profile = user.get("profile") or {}
    name = str(profile.get("display_name") or user.get("real_name") or user.get("name") or "")
    # A username is shown, not parsed, but it is inert all the same (no @ can ever ping).
    look = {"username": make_inert(f"{name[:60]} (mimic)".strip())}
    avatar = profile.get("image_72")
    if isinstance(avatar, str) and avatar.startswith("https://"):
        look["icon_url"] = avatar
    return look
