"""What `/mimic` answers: plain functions from (who, where, what they typed) to a Reply.

The Slack listeners in bot/app.py only parse, call `Responder.handle`, and send the Reply;
everything here runs (and is tested) without Slack. Nothing raises to the caller: every
failure becomes a message that says what to do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import delete, func, select
from sqlalchemy import text as sql
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from mimic.bot.batching import Closed, SampleBatcher
from mimic.bot.commands import (
    MENTION_USAGE,
    USAGE,
    Conversation,
    ListTargets,
    Mimic,
    OptOut,
    ParseError,
    Retrain,
    Simple,
    TargetRef,
    named_twice,
    parse,
    parse_mention,
)
from mimic.bot.models import ModelCache
from mimic.core.config import Settings
from mimic.core.ids import is_slack_id
from mimic.core.inert import make_inert, plain
from mimic.core.lock import advisory_key, waiting_lock
from mimic.core.store import (
    Channel,
    Coverage,
    Message,
    ModelVersion,
    RateLimitHit,
    Run,
    Store,
    User,
)
from mimic.trainer.corpus import (
    BASE,
    Target,
    TargetError,
    corpus_chars,
    may_imitate,
    recent,
    resolve,
)
from mimic.trainer.privacy import opt_in, opt_out
from mimic.trainer.registry import (
    UNLOADABLE,
    LoadedModel,
    Serving,
    active_version,
    fallback,
    serving,
)
from mimic.trainer.sampler import DEFAULT_TEMPERATURE, NoNovelText, reply

log = logging.getLogger(__name__)
PRIMING_MESSAGES = 3  # of the target's own, read before a reply (bench/drawing.py)
LIST_BEST, LIST_MATCHES = 10, 20
NO_DATABASE = ("mimic can't reach its database right now (it may be restarting), so nothing was "
               "done. Please try again in a minute; if it keeps happening, tell the admins.")
FAILED = ("Something went wrong on mimic's side; the admins can find the details in its log. "
          "Please try again in a minute.")


class Refused(Exception):
    """A request mimic turns down; the message says why and what to do (shown as is)."""


@dataclass(frozen=True)
class Written:
    """A generated message, inert, and what wrote it."""

    target: Target
    text: str
    model: str  # "the workspace model v3", "their own model v2"


@dataclass(frozen=True)
class Reply:
    text: str
    public: bool = False  # in_channel for everyone, else ephemeral to the caller
    voice: str | None = None  # the person written as (MIMIC_POST_AS borrows their look)


class Limiter(Protocol):
    def allow(self, user_id: str) -> float:
        """0 if allowed now (and counted), else the seconds until the next request is."""


class RateLimiter:
    """At most `per_minute` requests per user in any sliding 60 s, counted in this process
    (SQLite deployments: one bot process)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute, self.clock = per_minute, clock
        self._seen: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def allow(self, user_id: str) -> float:
        """0 if allowed now, else the seconds until the next request is."""
        now = self.clock()
        with self._lock:
            seen = self._seen[user_id]
            while seen and now - seen[0] >= 60:
                seen.popleft()
            if len(seen) >= self.per_minute:
                return 60 - (now - seen[0])
            seen.append(now)
            return 0.0


class SharedRateLimiter:
    """RateLimiter's rule counted in the store, for processes sharing it: replicas on one
    PostgreSQL, or `mimic serve --processes N` on SQLite. Counting and adding are one step
    under a lock (two processes cannot both take the 5th place).

    PostgreSQL: a lock per person for the transaction, and the database's clock (the
    replicas' own may disagree); two statements, as the lock must come before the count's
    snapshot. SQLite (one machine, one clock): the transaction starts with its write, which
    takes the database's write lock before anything is counted."""

    LOCK = sql("SELECT clock_timestamp() FROM pg_advisory_xact_lock(:key)")
    # Count the last minute's requests, drop older ones, and add this one if there is room.
    COUNT_AND_ADD = sql("""
        WITH recent AS (SELECT count(*) AS n, min(at) AS oldest FROM rate_limit_hits
                        WHERE user_id = :user AND at > :now - interval '60 seconds'),
             gone AS (DELETE FROM rate_limit_hits
                      WHERE user_id = :user AND at <= :now - interval '60 seconds'),
             added AS (INSERT INTO rate_limit_hits (user_id, at)
                       SELECT :user, :now FROM recent WHERE n < :limit)
        SELECT n, oldest FROM recent""")
    WINDOW = timedelta(seconds=60)

    def __init__(self, store: Store, per_minute: int, data_dir: Path | None = None) -> None:
        self.store, self.per_minute = store, per_minute
        if store.dialect != "postgresql":
            assert data_dir is not None, "SQLite's shared limit queues on a file lock"
            self.lock_path = data_dir / "rate-limit.lock"

    def allow(self, user_id: str) -> float:
        count, oldest, now = (self._postgresql if self.store.dialect == "postgresql"
                              else self._sqlite)(user_id)
        if count < self.per_minute:
            return 0.0
        return (oldest + self.WINDOW - now).total_seconds()

    def _postgresql(self, user_id: str) -> tuple[int, datetime, datetime]:
        with self.store.session() as s:
            # Each statement its own snapshot, so the count sees what the lock's last holder
            # committed (a database defaulting to REPEATABLE READ would admit everyone).
            s.connection(execution_options={"isolation_level": "READ COMMITTED"})
            now = s.scalar(self.LOCK, {"key": advisory_key(f"rate:{user_id}")})
            count, oldest = s.execute(self.COUNT_AND_ADD, {
                "user": user_id, "now": now, "limit": self.per_minute}).one()
        return count, oldest, now

    def _sqlite(self, user_id: str) -> tuple[int, datetime, datetime]:
        mine = RateLimitHit.user_id == user_id
        # Queued on a file lock first: a waiter wakes the moment it is free, where SQLite's
        # own wait for its write lock sleeps up to 100 ms at a time (p99 +400 ms measured).
        with waiting_lock(self.lock_path), self.store.session() as s:
            now = datetime.now(UTC).replace(tzinfo=None)  # read in turn; SQLite keeps naive UTC
            s.execute(delete(RateLimitHit).where(mine, RateLimitHit.at <= now - self.WINDOW))
            count, oldest = s.execute(select(func.count(), func.min(RateLimitHit.at))
                                      .where(mine)).one()
            if count < self.per_minute:
                s.add(RateLimitHit(user_id=user_id, at=now))
        return count, oldest, now


def rate_limiter(settings: Settings, store: Store) -> Limiter:
    """Counted in the store when several processes may share it (PostgreSQL, or more than one
    `mimic serve` process), else in memory."""
    if store.dialect == "postgresql" or settings.serve_processes > 1:
        return SharedRateLimiter(store, settings.rate_limit, settings.data_dir)
    return RateLimiter(settings.rate_limit)


def _label(written: Written, temperature: float) -> str:
    """The line above every generated message: whose voice, how, and that it is generated."""
    return make_inert(f"_mimicking {written.target.label} · temp {temperature:g} · "
                      f"{written.model} · generated text, not a real message_")


def quoted(text: str) -> str:
    """Generated text as a Slack quote, every line of it: a line outside the quote would read
    as the bot's own words (a message can hold newlines, so can what a model writes)."""
    return "\n".join(">" + line for line in text.split("\n"))


def next_training(settings: Settings) -> str:
    trigger = CronTrigger.from_crontab(settings.retrain_cron)
    when = trigger.get_next_fire_time(None, datetime.now(trigger.timezone))
    return f"{when:%A %H:%M %Z}".strip() if when else "not scheduled"


HELP = (
    "*mimic* writes a new message in the voice of a person or channel, learned from their "
    "history. It is always labelled as generated and never pings anyone.\n"
    "• `/mimic @alice` · `/mimic #random temp=1.2` (temperature above 0 and at most 2; "
    "higher is wilder) · `/mimic @alice \"I think we should\"` (start from a seed text)\n"
    "• `/mimic @alice @bob turns=4 \"cats?\"`: a conversation between 2 to 4 people or "
    "channels, 2 to 8 turns, each answering the ones before\n"
    "• `/mimic list`: who and what can be mimicked (`/mimic list alice` searches) · "
    "`/mimic status`: data, models, next training\n"
    "• `/mimic optout`: never imitate me, delete my models (`--forget` also deletes my "
    "messages) · `/mimic optin`: undo that\n"
    "• `/mimic retrain [@x | #y | all]`: admins only"
)


class Responder:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        cache: ModelCache,
        *,
        is_admin: Callable[[str], bool] = lambda _user: False,
        start_retrain: Callable[[Target | None, Callable[[Reply], None]], bool] | None = None,
        batcher: SampleBatcher | None = None,
    ) -> None:
        self.settings, self.store, self.cache = settings, store, cache
        self.batcher = batcher or SampleBatcher(cache.device)
        self.is_admin = is_admin
        self.start_retrain = start_retrain
        self.limiter = rate_limiter(settings, store)

    def close(self) -> None:
        """Stop the sampling thread (requests still waiting are told mimic is stopping)."""
        self.batcher.close()

    def handle(self, user_id: str, channel_id: str, text: str,
               followup: Callable[[Reply], None] = lambda _reply: None) -> Reply:
        """The answer to `/mimic text`."""
        return self.safely(user_id, channel_id, text,
                            lambda: self._command(user_id, channel_id, text, followup))

    def _command(self, user_id: str, channel_id: str, text: str,
                 followup: Callable[[Reply], None]) -> Reply:
        command = parse(text)
        if isinstance(command, Mimic):
            return self.mimic(user_id, channel_id, command)
        if isinstance(command, Conversation):
            return self.conversation(user_id, channel_id, command)
        if isinstance(command, OptOut):
            return self.optout(user_id, command.forget)
        if isinstance(command, Retrain):
            return self.retrain(user_id, channel_id, command.target, followup)
        if isinstance(command, ListTargets):
            return self.list(channel_id, command.query)
        return {"help": lambda: Reply(HELP), "status": self.status,
                "optin": lambda: self.optin(user_id)}[command.verb]()

    def mention(self, user_id: str, channel_id: str, text: str, bot_user_id: str | None,
                read_context: Callable[[], list[tuple[str, str]]]) -> Reply:
        """The answer to `@mimic alice` said in a conversation: a public Reply is posted in
        the thread, as the target's answer to what `read_context` returns."""
        def answer() -> Reply:
            command = parse_mention(text, bot_user_id)
            if isinstance(command, Simple):
                return Reply(MENTION_USAGE)
            return self.in_thread(user_id, channel_id, command.target, command.temperature,
                                  read_context)
        return self.safely(user_id, channel_id, text, answer)

    def reply_to(self, user_id: str, channel_id: str, author_id: str,
                 read_context: Callable[[], list[tuple[str, str]]]) -> Reply:
        """The "Mimic a reply" shortcut: `author_id`'s answer to a message (what
        `read_context` returns ends with it), asked for by `user_id`."""
        if not is_slack_id(author_id):
            return Reply("That message has no person as its author (a bot or an app wrote "
                         "it), so there is nobody to imitate.")
        return self.safely(user_id, channel_id, author_id, lambda: self.in_thread(
            user_id, channel_id, TargetRef("@", id=author_id), DEFAULT_TEMPERATURE,
            read_context))

    def in_thread(self, user_id: str, channel_id: str, ref: TargetRef, temperature: float,
                  read_context: Callable[[], list[tuple[str, str]]]) -> Reply:
        """A public reply in `ref`'s voice to the conversation `read_context` returns (read
        only once the request is allowed; an empty one falls back to their own messages)."""
        self.check_rate(user_id)
        target = self._target(ref, channel_id)
        written = self.write(target, channel_id, temperature=temperature,
                             context=read_context() or None)
        return Reply(f"{_label(written, temperature)}\n{quoted(written.text)}", public=True,
                     voice=target.ident if target.kind == "user" else None)

    def safely(self, user_id: str, channel_id: str, what: str,
                answer: Callable[[], Reply]) -> Reply:
        """`answer()`, or a message that says what went wrong: never an exception."""
        if not is_slack_id(user_id) or not (channel_id == "" or is_slack_id(channel_id)):
            return Reply("This request did not come with Slack's user and channel ids, so I "
                         "can't answer it.")
        try:
            return answer()
        except (ParseError, Refused) as exc:
            return Reply(str(exc))
        except Closed:
            return Reply("mimic is restarting; please try again in a minute.")
        except OperationalError:  # the database is down or restarting: say so, not "a bug"
            log.exception("mimic's answer to %r could not use the database", what[:100])
            return Reply(NO_DATABASE)
        except TargetError as exc:
            return Reply(f"{exc} {USAGE}")
        except Exception:
            log.exception("mimic's answer to %r failed", what[:100])
            return Reply(FAILED)

    # -- targets ---------------------------------------------------------------------------

    def _target(self, ref: TargetRef, channel_id: str) -> Target:
        with self.store.session() as session:
            return resolve(session, f"{ref.sigil}{ref.id or ref.name}", where=channel_id)

    # -- commands --------------------------------------------------------------------------

    def mimic(self, user_id: str, channel_id: str, command: Mimic) -> Reply:
        self.check_rate(user_id)
        target = self._target(command.target, channel_id)
        written = self.write(target, channel_id, temperature=command.temperature,
                             seed=command.seed)
        return Reply(f"{_label(written, command.temperature)}\n{quoted(written.text)}",
                     public=True)

    def conversation(self, user_id: str, channel_id: str, command: Conversation) -> Reply:
        """Its voices taking turns in the order named, each turn written as an answer to the
        turns before it, posted as one labelled message. Every voice is resolved before any
        turn is written, and each voice has its first turn within the first round, so a
        refusal (opted out, no model) costs at most that round and posts nothing."""
        self.check_rate(user_id)  # once: the whole conversation is one request
        voices = [self._target(ref, channel_id) for ref in command.targets]
        for i, voice in enumerate(voices):
            if voice in voices[:i]:  # `@alice @U1`: two names, one person
                raise named_twice(voice.label)
        said: list[tuple[str, str]] = []  # (author id, text) so far, oldest first
        turns: list[Written] = []
        for i in range(command.turns):
            voice = voices[i % len(voices)]
            # The first turn opens as a plain /mimic does, after the voice's own latest words.
            turns.append(self.write(voice, channel_id, temperature=command.temperature,
                                    seed=command.seed if i == 0 else "", context=said or None))
            # A channel is nobody in particular: the model reads its turns as anyone's. The
            # model reads what was written, not its inert form for Slack.
            said.append((voice.ident if voice.kind == "user" else "", plain(turns[-1].text)))
        names = [voice.label for voice in voices]
        models = " and ".join(dict.fromkeys(turn.model for turn in turns))
        header = (f"_a conversation between {', '.join(names[:-1])} and {names[-1]} · "
                  f"temp {command.temperature:g} · {models} · generated text, not real "
                  "messages_")
        body = "\n".join(f"{make_inert(f'*{turn.target.label}*')}\n{quoted(turn.text)}"
                         for turn in turns)
        return Reply(f"{make_inert(header)}\n{body}", public=True)

    def check_rate(self, user_id: str) -> None:
        """Refused if `user_id` asked for more than the rate limit allows this minute."""
        wait = self.limiter.allow(user_id)
        if wait:
            raise Refused(f"Easy there: mimic answers {self.settings.rate_limit} requests a "
                          f"minute per person. Try again in {wait:.0f} s.")

    def write(self, target: Target, channel_id: str, *,
              temperature: float = DEFAULT_TEMPERATURE, seed: str = "",
              context: Sequence[tuple[str, str]] | None = None) -> Written:
        """A new message in `target`'s voice, said in `channel_id`: as an answer to `context`
        ((author id, text), oldest first), or after the target's own latest messages.
        Refused (with what to do) when the target may not or cannot be imitated."""
        with self.store.session() as session:
            if target.kind == "user":
                person = session.get(User, target.ident)
                if person is not None and not may_imitate(person, self.settings):
                    why = ("has opted out of mimic" if person.opted_out else
                           "hasn't opted in to mimic (this workspace asks people first: "
                           "`/mimic optin`)")
                    raise Refused(f"{target.label} {why}, so I won't imitate them.")
            chosen = serving(session, target)
            if chosen is None:
                raise Refused(self._no_model(session, target))
            if context is None:  # their latest messages, so the reply starts where they start
                context = recent(session, self.settings, target, PRIMING_MESSAGES)
        try:
            loaded = self._load(chosen, target)
            result = reply(loaded, target.key, temperature=temperature, seed_text=seed,
                           where=channel_id, context=context,
                           sampler=lambda row, k: self.batcher.sample(loaded, [row] * k))
        except NoNovelText:
            raise Refused(f"Every message I drew for {target.label} repeated their own words "
                          "too closely, so I won't post it. Try a higher temperature, e.g. "
                          f"`/mimic {target.label} temp=1.1`.") from None
        model = ("the workspace model" if chosen.row.target == BASE.key
                 else "their own model") + f" v{loaded.version}"
        return Written(target, result.texts[0], model)

    def _load(self, chosen: Serving, target: Target) -> LoadedModel:
        """The chosen version, or, if its files are damaged, the one active before it."""
        try:
            return self.cache.get(chosen.row, chosen.parent)
        except UNLOADABLE as exc:
            with self.store.session() as session:
                previous = fallback(session, chosen.row, target)
            if previous is None:
                raise
            log.error("%s v%s does not load (%s): serving v%s until it is retrained",
                      chosen.row.target, chosen.row.version, exc, previous.row.version)
            return self.cache.get(previous.row, previous.parent)

    def _no_model(self, session: Session, target: Target) -> str:
        chars = corpus_chars(session, self.settings, target)
        if chars < self.settings.min_chars:
            return (f"{target.label} has {chars:,} characters of messages I may learn from; "
                    f"I need at least {self.settings.min_chars:,} to imitate anyone, so not "
                    "yet.")
        return (f"I haven't learned {target.label} yet: the next training runs "
                f"{next_training(self.settings)}. An admin can start it now with "
                "`/mimic retrain`.")

    def list(self, channel_id: str, query: str = "") -> Reply:
        """Who can be mimicked: a count and the best imitated few, or the names matching
        `query`. Private channels only from inside themselves; opted-out people never."""
        with self.store.session() as session:
            shared = active_version(session, BASE.key)
            found: dict[str, tuple[str, float | None, str]] = {}  # key → (label, loss, how)
            if shared is not None:
                for cover, user, channel in session.execute(
                        select(Coverage, User, Channel)
                        .outerjoin(User, Coverage.target == "user:" + User.id)
                        .outerjoin(Channel, Coverage.target == "channel:" + Channel.id)
                        .where(Coverage.version_id == shared.id)):
                    if label := self._listable(user, channel, channel_id, query):
                        found[cover.target] = (label, cover.val_loss, "")
            for version, user, channel in session.execute(
                    select(ModelVersion, User, Channel)
                    .outerjoin(User, ModelVersion.target == "user:" + User.id)
                    .outerjoin(Channel, ModelVersion.target == "channel:" + Channel.id)
                    .where(ModelVersion.status == "active", ModelVersion.target != BASE.key)):
                label = self._listable(user, channel, channel_id, query)
                known = found.get(version.target)
                if label and (known is None or known[1] is None
                              or version.val_loss <= known[1]):
                    found[version.target] = (label, version.val_loss, ", own model")
        if not found:
            if query:
                return Reply(f"Nobody I can mimic has `{make_inert(query)}` in their name.")
            return Reply("No models yet. An admin can run `/mimic retrain`, or wait for the "
                         f"nightly training ({next_training(self.settings)}).")
        people = sum(key.startswith("user:") for key in found)
        ranked = sorted(found.values(), key=lambda f: (f[1] is None, f[1] or 0.0))
        shown = ranked[: LIST_MATCHES if query else LIST_BEST]
        lines = [f"• {make_inert(label)}: "
                 + (f"{quality(loss)} ({loss:.2f} nats/char{how})" if loss is not None
                    else f"not scored yet{how}") for label, loss, how in shown]
        title = (f"*{len(found)} match `{make_inert(query)}`*" if query else
                 f"*I can mimic {people} people and {len(found) - people} channels*; the "
                 "best imitated (lower loss imitates better):")
        more = (f"\n…and {len(found) - len(shown)} more: `/mimic list name` searches."
                if len(found) > len(shown) else "")
        return Reply(f"{title}\n" + "\n".join(lines) + more)

    def _listable(self, user: User | None, channel: Channel | None, channel_id: str,
                  query: str) -> str | None:
        """The label a list shows for a target, or None if it must not appear here."""
        if user is not None and may_imitate(user, self.settings):
            names, label = (user.name, user.display_name, user.real_name), f"@{user.name}"
        elif channel is not None and (not channel.is_private or channel.id == channel_id):
            names, label = (channel.name,), f"#{channel.name}"
        else:
            return None
        wanted = query.lower()
        return label if not wanted or any(wanted in n.lower() for n in names) else None

    def status(self) -> Reply:
        with self.store.session() as session:
            lines = status_lines(session, self.settings)
        return Reply("*mimic status*\n" + "\n".join(lines))

    def optout(self, user_id: str, forget: bool) -> Reply:
        removed = opt_out(self.store, self.settings.data_dir, user_id, forget=forget)
        done = (f"You're opted out: nobody can mimic you, and {removed} model versions of you "
                "were deleted.")
        if forget:
            done += " Your stored messages are deleted too."
        return Reply(done + " Channel and workspace models are retrained without your messages "
                     "at the next run. `/mimic optin` undoes this.")

    def optin(self, user_id: str) -> Reply:
        opt_in(self.store, user_id)
        return Reply("You're opted in: your public messages can train models again from the "
                     "next training run.")

    def may_retrain(self, user_id: str) -> bool:
        """An admin: on MIMIC_ADMINS, or a workspace admin or owner (users.info)."""
        return user_id in self.settings.admins or self.is_admin(user_id)

    def retrain(self, user_id: str, channel_id: str, ref: TargetRef | None,
                followup: Callable[[Reply], None]) -> Reply:
        if not self.may_retrain(user_id):
            return Reply("Sorry, only mimic's admins can start a retraining. It also runs by "
                         f"itself {next_training(self.settings)}.")
        target = self._target(ref, channel_id) if ref else None
        if self.start_retrain is None or not self.start_retrain(target, followup):
            return Reply("A retraining run is already going; I'll only start one at a time. "
                         "`/mimic status` shows when it's done.")
        what = target.label if target else "everything that changed"
        return Reply(f"Retraining {what}: exporting new messages, then training. I'll post "
                     "progress and the results here.")


def quality(loss: float) -> str:
    """A validation loss (nats per character) in words, as lists and the App Home show it."""
    return "great" if loss < 1.5 else "good" if loss < 1.8 else "rough" if loss < 2.2 else \
        "babbling"


def status_lines(session: Session, settings: Settings) -> list[str]:
    """What `/mimic status` and the admins' App Home show: data, models, last and next run."""
    messages = session.scalar(select(func.count()).select_from(Message)) or 0
    last = session.scalars(select(Run).order_by(Run.id.desc())).first()
    shared = active_version(session, BASE.key)
    covered = session.scalars(select(Coverage.target).where(
        Coverage.version_id == shared.id)).all() if shared is not None else []
    dedicated = session.scalar(select(func.count()).select_from(ModelVersion).where(
        ModelVersion.status == "active", ModelVersion.target != BASE.key)) or 0
    pending = session.scalar(select(func.count()).select_from(User)
                             .where(User.opted_out)) or 0
    people = sum(key.startswith("user:") for key in covered)
    model = (f"• workspace model v{shared.version}: {people} people and "
             f"{len(covered) - people} channels; {dedicated} model{'s' * (dedicated != 1)} "
             "of their own"
             if shared is not None else "• no workspace model yet")
    lines = [f"• {messages:,} messages stored", model,
             f"• last {last.kind}: {last.started_at:%Y-%m-%d %H:%M} UTC ({last.status})"
             if last else "• nothing imported or exported yet",
             f"• next training: {next_training(settings)}"]
    if pending:
        lines.append(f"• {pending} people opted out: models that learned from them are "
                     "retrained without them at the next run")
    return lines
