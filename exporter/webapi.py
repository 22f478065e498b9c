"""`mimic export`: the workspace's history through the Slack Web API, resumable and exactly-once.

Each channel is walked from its newest message back to its `Watermark.done_ts`, one page at a
time; every page is written in its own transaction together with the watermark, so a run killed
at any point resumes below the last page it stored and never loses or doubles a message.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from rich.console import Console
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mimic.core.config import Settings
from mimic.core.store import Message, Run, Store, Watermark, utcnow
from mimic.exporter.live import EventSpool
from mimic.exporter.messages import (
    BadEntry,
    channel_row,
    drop_reason,
    is_ts,
    malformed,
    message_row,
    user_row,
)

log = logging.getLogger(__name__)

PAGE = 200  # history page size: Slack allows up to 999, smaller pages lose less when killed
RETRIES = 5  # 429s in a row per call before giving up; each waits Retry-After
TOKEN_ERRORS = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked",
                          "token_expired", "not_allowed_token_type"})


class SlackExportError(Exception):
    """The export cannot go on; the message says what to change."""


@dataclass
class ExportSummary:
    kept: int = 0  # people's messages fetched this run
    new: int = 0  # of those, new or edited in the store
    deleted: int = 0  # stored messages found deleted in Slack (see RECHECK)
    replayed: int = 0  # live events that had failed to apply, applied now
    dropped: Counter[str] = field(default_factory=Counter)
    per_channel: Counter[str] = field(default_factory=Counter)
    channels: list[str] = field(default_factory=list)  # names exported
    not_member: list[str] = field(default_factory=list)  # names skipped: bot not invited
    users: int = 0

    def title(self) -> str:
        return (f"Exported {len(self.channels)} channel(s) through the Slack Web API "
                f"({self.users:,} users)")


def make_client(settings: Settings) -> WebClient:
    if settings.slack_bot_token is None or not settings.slack_bot_token.get_secret_value():
        raise SlackExportError("SLACK_BOT_TOKEN is not set — copy the Bot User OAuth Token "
                               "(xoxb-…) from your Slack app's OAuth & Permissions page into .env.")
    client = WebClient(token=settings.slack_bot_token.get_secret_value(),
                       base_url=settings.slack_api_url)
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=RETRIES))
    return client


def _explain(exc: SlackApiError, channel: str | None = None) -> SlackExportError:
    """A Slack error as a message the user can act on (never with the token in it)."""
    data = exc.response.data if isinstance(exc.response.data, dict) else {}
    error = str(data.get("error") or exc.response.status_code)
    where = f" #{channel}" if channel else ""
    if error in TOKEN_ERRORS:
        return SlackExportError(f"SLACK_BOT_TOKEN is invalid ({error}) — copy the Bot User "
                                "OAuth Token (xoxb-…) from your Slack app's OAuth & Permissions "
                                "page into .env.")
    if error == "missing_scope":
        needed = data.get("needed") or "(Slack did not say which)"
        return SlackExportError(f"The Slack app lacks the scope {needed}. Add it under OAuth & "
                                "Permissions → Bot Token Scopes in the app config, reinstall the "
                                "app to the workspace, and update SLACK_BOT_TOKEN if it changed.")
    if error == "not_in_channel":
        return SlackExportError(f"The bot is not a member of{where}: type `/invite @mimic` in "
                                "that channel, then run the export again.")
    if error == "ratelimited":
        return SlackExportError(f"Slack kept rate-limiting the export{where} after {RETRIES} "
                                "retries. Run it again later: it resumes where it stopped.")
    return SlackExportError(f"Slack answered {error}{where}. Run the export again: it resumes "
                            "where it stopped.")


def _pages(client: WebClient, method: str, key: str, **params: Any) -> Iterator[list[Any]]:
    """Every page of a cursor-paginated method."""
    cursor = None
    while True:
        response = client.api_call(method, http_verb="GET",
                                    params={**params, **({"cursor": cursor} if cursor else {})})
        yield list(response.get(key) or [])
        cursor = (response.get("response_metadata") or {}).get("next_cursor")
        if not cursor:
            return


def _pick(listed: list[dict[str, Any]], wanted: list[str] | None, settings: Settings,
          include_archived: bool) -> list[dict[str, Any]]:
    """The channels to export: named ones (checked) or every allowed one the bot is in."""
    if not wanted:
        return [c for c in listed if settings.channel_allowed(c["name"])]
    by_name = {c["name"].lower(): c for c in listed}
    chosen = []
    for raw in wanted:
        name = raw.lstrip("#").lower()
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join('#' + c for c in close)}?" if close else ""
            archived = "" if include_archived else " Archived channels need --include-archived."
            raise SlackExportError(f"No channel #{name} that the bot can see.{hint}{archived}")
        if not settings.channel_allowed(name):
            raise SlackExportError(f"#{name} is not in MIMIC_CHANNELS, so mimic may not read it. "
                                   "Add it there first.")
        chosen.append(by_name[name])
    return chosen


def export_workspace(
    store: Store,
    settings: Settings,
    *,
    channels: list[str] | None = None,
    include_archived: bool = False,
    full: bool = False,
    progress: Console | None = None,
    client: WebClient | None = None,
) -> ExportSummary:
    """Fetch users, channels and new history into the store; see the module docstring.

    Each channel's last MIMIC_RECHECK_DAYS are walked again, so that messages deleted (or
    edited) in Slack since the last run are noticed; `full` re-walks every channel to its
    start. Live events that could not be stored when they came are applied first.
    """
    client = client or make_client(settings)
    summary = ExportSummary()
    with store.session() as session:
        run = Run(kind="export", source=settings.slack_api_url, counts={})
        session.add(run)
    try:
        _export(store, client, settings, summary, channels, include_archived, full, progress)
    except SlackApiError as exc:
        _finish(store, run, summary, "failed")
        raise _explain(exc) from None
    except OSError as exc:  # urllib's URLError and socket errors: Slack is not reachable
        _finish(store, run, summary, "failed")
        raise SlackExportError(f"Cannot reach Slack at {settings.slack_api_url} ({exc}). Check "
                               "the network and SLACK_API_URL, then run again: the export "
                               "resumes where it stopped.") from None
    except BaseException:
        _finish(store, run, summary, "failed")
        raise
    _finish(store, run, summary, "ok")
    return summary


def _finish(store: Store, run: Run, summary: ExportSummary, status: str) -> None:
    with store.session() as session:
        row = session.get(Run, run.id)
        if row is not None:
            row.status, row.finished_at = status, utcnow()
            row.counts = {"kept": summary.kept, "new": summary.new, "users": summary.users,
                          "channels": summary.channels, "not_member": summary.not_member,
                          "dropped": dict(summary.dropped)}


def _export(store: Store, client: WebClient, settings: Settings, summary: ExportSummary,
            wanted: list[str] | None, include_archived: bool, full: bool,
            progress: Console | None) -> None:
    client.auth_test()  # a bad token fails here, before anything is fetched
    users = _valid(summary, "user", user_row,
                   (u for page in _pages(client, "users.list", "members", limit=200)
                    for u in page))
    listed = [c for page in _pages(client, "conversations.list", "channels",
                                   types="public_channel,private_channel",
                                   exclude_archived=not include_archived, limit=200)
              for c in page if isinstance(c, dict)]
    rows = _valid(summary, "channel", lambda c: channel_row(c, private=bool(c.get("is_private"))),
                  listed)
    valid = {r["id"] for r in rows}
    listed = [c for c in listed if c.get("id") in valid]
    with store.session() as session:
        store.upsert_users(session, users)
        store.upsert_channels(session, rows)
        opted_out = store.opted_out_ids(session)
    summary.users = len(users)
    summary.replayed = EventSpool(settings.data_dir).replay(
        store, allow=settings.channel_allowed,
        channel_info=lambda cid: client.conversations_info(channel=cid)["channel"])
    ctx = _Context(bots=frozenset(u["id"] for u in users if u["is_bot"]),
                   users={u["id"]: u["name"] for u in users},
                   channels={r["id"]: r["name"] for r in rows}, opted_out=opted_out,
                   recheck_days=settings.recheck_days)
    for channel in _pick(listed, wanted, settings, include_archived):
        name = channel["name"]
        if not channel.get("is_member"):
            if wanted:
                raise SlackExportError(f"The bot is not a member of #{name}: type "
                                       "`/invite @mimic` in that channel, then run again.")
            summary.not_member.append(name)
            continue
        try:
            _export_channel(store, client, ctx, channel["id"], name, summary, full)
        except SlackApiError as exc:
            raise _explain(exc, name) from None
        summary.channels.append(name)
        if progress is not None:
            progress.print(f"#{name}: {summary.per_channel[name]:,} messages fetched")
    if summary.not_member and progress is not None:
        progress.print("Skipped (the bot is not a member): "
                       + ", ".join(f"#{n}" for n in summary.not_member)
                       + ". Type `/invite @mimic` in a channel to include it.")


def _valid(summary: ExportSummary, what: str, make: Callable[[Any], dict[str, Any]],
           entries: Iterator[Any] | list[Any]) -> list[dict[str, Any]]:
    """Rows for the entries that can be stored; the others are logged and counted."""
    rows = []
    for entry in entries:
        try:
            if not isinstance(entry, dict):
                raise BadEntry(f"is {type(entry).__name__}, not an object")
            rows.append(make(entry))
        except BadEntry as exc:
            log.warning("skipped a %s that Slack listed: it %s", what, exc)
            summary.dropped[f"malformed {what}"] += 1
    return rows


@dataclass
class _Context:
    bots: frozenset[str]
    users: dict[str, str]  # id → handle
    channels: dict[str, str]  # id → name
    opted_out: set[str]  # nothing of theirs is stored again
    recheck_days: float


def _export_channel(store: Store, client: WebClient, ctx: _Context, cid: str, name: str,
                    summary: ExportSummary, full: bool) -> None:
    with store.session() as session:
        mark = session.get(Watermark, cid) or Watermark(channel_id=cid)
        if full:
            mark.pending_high = mark.pending_low = None  # start over from the newest message
        # Down to what is stored, and further back over the recheck window: what was deleted
        # there since the last run is noticed (history lists only what still exists). Only
        # there: older messages missing from history may just be hidden (a free workspace
        # shows 90 days), not deleted.
        floor = Decimal(int(time.time() - 86_400 * ctx.recheck_days))
        done = None if full or mark.done_ts is None else min(Decimal(mark.done_ts), floor)
        high, low = mark.pending_high, mark.pending_low
        resumed = low is not None
        session.merge(mark)
        stored = _stored_threads(session, cid)
    while True:
        # Walking by `latest` instead of a cursor makes the position a plain ts, which the
        # watermark stores: a killed run resumes from it with nothing to remember but the row.
        params: dict[str, Any] = {"channel": cid, "limit": PAGE, "inclusive": False}
        if low:
            params["latest"] = low
        if done is not None:
            params["oldest"] = str(done)
        response = client.conversations_history(**params)
        messages = [m for m in response.get("messages") or [] if isinstance(m, dict)]
        page_tss = [Decimal(str(m["ts"])) for m in messages if is_ts(m.get("ts"))]
        if not page_tss:
            break
        threads = [m for m in messages if int(m.get("reply_count") or 0) > 0]
        replies = [r for m in threads
                   for page in _pages(client, "conversations.replies", "messages",
                                      channel=cid, ts=m["ts"], limit=PAGE)
                   for r in page if isinstance(r, dict) and r.get("ts") != m["ts"]]
        # Decimal, not float: a ts has 16 digits, more than a float keeps.
        high = high or str(max(page_tss))
        covered = (min(page_tss) if response.get("has_more") else done,
                   Decimal(low) if low else None)
        low = str(min(page_tss))
        with store.session() as session:
            _write(store, session, ctx, cid, name, messages + replies, summary)
            _mark_deleted(session, cid, stored, messages, replies, covered, floor, summary)
            _save(session, cid, done_ts=mark.done_ts, pending_high=high, pending_low=low)
        if not response.get("has_more"):
            break
    if not resumed and low is None:
        # Slack lists nothing in the walked range: whatever is stored there was deleted.
        with store.session() as session:
            _mark_deleted(session, cid, stored, [], [], (done, None), floor, summary)
    with store.session() as session:
        # The walk reached done_ts: everything up to the run's newest message is stored.
        newest = max((t for t in (high, mark.done_ts) if t), key=Decimal, default=None)
        _save(session, cid, done_ts=newest, pending_high=None, pending_low=None)
    if resumed:
        # That finished a killed run's walk; what was posted since is above its pending_high.
        _export_channel(store, client, ctx, cid, name, summary, full=False)


@dataclass
class _Stored:
    """A channel's stored, undeleted messages: top-level ts, and reply ts by thread."""

    top: set[Decimal] = field(default_factory=set)
    replies: dict[Decimal, set[Decimal]] = field(default_factory=dict)


def _stored_threads(session: Session, cid: str) -> _Stored:
    stored = _Stored()
    for ts, thread_ts in session.execute(select(Message.ts, Message.thread_ts).where(
            Message.channel_id == cid, ~Message.deleted)):
        if thread_ts is None or thread_ts == ts:
            stored.top.add(Decimal(ts))
        else:
            stored.replies.setdefault(Decimal(thread_ts), set()).add(Decimal(ts))
    return stored


def _mark_deleted(session: Session, cid: str, stored: _Stored,
                  messages: list[dict[str, Any]], replies: list[dict[str, Any]],
                  covered: tuple[Decimal | None, Decimal | None], floor: Decimal,
                  summary: ExportSummary) -> None:
    """Mark deleted what is stored in the range `covered` (oldest exclusive, latest
    exclusive; None: unbounded), and newer than `floor`, but no longer in Slack: top-level
    messages the page does not list, and replies its threads no longer have. A deleted
    parent with replies left is a `tombstone` in Slack: its text is gone too."""
    oldest = floor if covered[0] is None else max(covered[0], floor)
    latest = covered[1]

    def within(ts: Decimal) -> bool:
        return ts > oldest and (latest is None or ts < latest)

    listed = {Decimal(str(m["ts"])) for m in messages
              if is_ts(m.get("ts")) and m.get("subtype") != "tombstone"}
    answered = {Decimal(str(r["ts"])) for r in replies if is_ts(r.get("ts"))}
    gone = [ts for ts in stored.top if within(ts) and ts not in listed]
    gone += [reply for parent, kept in stored.replies.items() if within(parent)
             for reply in kept if reply not in answered]
    if gone:
        tss = sorted(str(ts) for ts in gone)
        for start in range(0, len(tss), 500):
            session.execute(update(Message).where(
                Message.channel_id == cid, Message.ts.in_(tss[start:start + 500]))
                .values(deleted=True))
        stored.top.difference_update(gone)
        for kept in stored.replies.values():
            kept.difference_update(gone)
        summary.deleted += len(gone)


def _save(session: Session, cid: str, **values: str | None) -> None:
    session.merge(Watermark(channel_id=cid, updated_at=utcnow(), **values))


def _write(store: Store, session: Session, ctx: _Context, cid: str, name: str,
           messages: list[dict[str, Any]], summary: ExportSummary) -> None:
    rows = []
    for message in messages:
        reason = malformed(message)
        if reason is not None:
            log.warning("skipped a malformed message in #%s: it %s", name, reason)
            reason = "malformed"
        else:
            reason = drop_reason(message, ctx.bots)
        if reason is None and message["user"] in ctx.opted_out:
            reason = "opted out of mimic"
        if reason is None:
            rows.append(message_row(message, cid, ctx.users, ctx.channels))
        else:
            summary.dropped[reason] += 1
    store.ensure_users(session, {r["user_id"] for r in rows} - ctx.users.keys())
    summary.new += store.upsert_messages(session, rows)
    summary.kept += len(rows)
    summary.per_channel[name] += len(rows)
