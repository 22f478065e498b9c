"""Training text from the store. `eligible()` is the one place that decides whose writing may
be learned from; every corpus query goes through it.

Targets: "base" (the shared workspace model, conditioned on who writes and where), "user:<id>"
(a person, from public channels) and "channel:<id>" (everything said in one channel; a private
channel's model is a dedicated one, only served there). `load_workspace` is what the shared
model reads; `load_corpus` one target's text, for dedicated models and for scoring.
"""

from __future__ import annotations

import functools
import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import BindParameter, ColumnElement, Select, and_, bindparam, func, or_, select
from sqlalchemy.orm import Session

from mimic.core.config import Settings
from mimic.core.ids import is_slack_id
from mimic.core.store import Channel, Message, User

VAL_FRACTION = 0.1


class TargetError(ValueError):
    """A target name that does not resolve; the message says what to do."""


@dataclass(frozen=True)
class Target:
    key: str  # "base" | "user:U123" | "channel:C123"
    label: str  # "workspace" | "@alice" | "#random"
    private: bool = False

    @property
    def kind(self) -> str:
        return self.key.split(":", 1)[0]

    @property
    def ident(self) -> str:
        return self.key.split(":", 1)[-1]

    @property
    def ref(self) -> str:
        """What `resolve` maps back to this target: by id, so renames do not matter."""
        return {"user": f"@{self.ident}", "channel": f"#{self.ident}"}.get(self.kind, "base")

    @property
    def dirname(self) -> str:
        return self.key.replace(":", "-")


BASE = Target("base", "workspace")


@dataclass(frozen=True)
class Said:
    """One message as a model reads it: who, where, what."""

    ts: str
    user: str
    channel: str
    text: str


@dataclass
class Corpus:
    """One target's messages in time order; the newest 10 % are its validation set."""

    target: Target
    said: list[Said]
    cut: int  # said[:cut] trains, said[cut:] validates
    watermark: str | None  # newest message ts in the corpus
    digest: str  # changes with any edit, deletion or exclusion, not just new messages

    @property
    def train_said(self) -> list[Said]:
        return self.said[: self.cut]

    @property
    def val_said(self) -> list[Said]:
        return self.said[self.cut :]

    @property
    def train(self) -> list[str]:
        return [m.text for m in self.train_said]

    @property
    def val(self) -> list[str]:
        return [m.text for m in self.val_said]

    @property
    def chars(self) -> int:
        """Training characters (+ 1 per message, its end mark)."""
        return sum(len(m.text) + 1 for m in self.train_said)


def consenting(consent: str) -> ColumnElement[bool]:
    """People who may be learned from and imitated, under MIMIC_CONSENT (`consent`)."""
    return User.opted_in if consent == "opt-in" else ~User.opted_out


def may_imitate(user: User, settings: Settings) -> bool:
    """`consenting` for one loaded user (the bot's check before answering /mimic @them)."""
    return user.opted_in if settings.consent == "opt-in" else not user.opted_out


def may_have_model(session: Session, settings: Settings, target: Target) -> bool:
    """Whether a model of `target` may exist now: not for a person who opted out (or has not
    opted in, under MIMIC_CONSENT=opt-in). Asked again when a model is published."""
    if target.kind != "user":
        return True
    person = session.get(User, target.ident)
    return person is not None and may_imitate(person, settings)


def eligible(settings: Settings) -> ColumnElement[bool]:
    """Messages any model may learn from: people's, not deleted, from consenting people, not
    DMs, and in an allowed channel. Joins Message with User and Channel."""
    return _eligible(settings.consent, tuple(settings.channels))


def _eligible(consent: str, channels: tuple[str, ...]) -> ColumnElement[bool]:
    rules = [~Message.deleted, ~User.is_bot, consenting(consent), ~Channel.is_dm]
    if channels:
        rules.append(func.lower(Channel.name).in_(channels))
    return and_(*rules)


def _rows(session: Session, settings: Settings, where: ColumnElement[bool]) -> list[tuple]:
    query = (select(Message.ts, Message.user_id, Message.channel_id, Message.text)
             .join(User, Message.user_id == User.id)
             .join(Channel, Message.channel_id == Channel.id)
             .where(eligible(settings), where)
             .order_by(Message.ts, Message.channel_id))
    return [tuple(r) for r in session.execute(query)]


def split_point(lengths: Sequence[int], fraction: float = VAL_FRACTION) -> int:
    """Index of the first validation message: the last `fraction` of the characters (by time)."""
    if len(lengths) < 2:
        return len(lengths)
    budget, seen = sum(lengths) * (1 - fraction), 0
    for index, length in enumerate(lengths):
        seen += length
        if seen > budget:
            return max(1, index)
    return len(lengths) - 1


def _digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode())
        h.update(b"\x00")
    return h.hexdigest()


def _scope(kind: str, ident: str | BindParameter[str]) -> ColumnElement[bool]:
    """Which eligible messages a target (its kind and id) learns from: a person's in public
    channels, a channel's own, everyone's public ones for the base."""
    if kind == "user":
        return and_(Message.user_id == ident, ~Channel.is_private)
    if kind == "channel":
        return Message.channel_id == ident
    return ~Channel.is_private


def corpus_size(session: Session, settings: Settings, target: Target) -> tuple[int, int]:
    """(messages, characters) that `load_corpus` would give, cheaply; characters count each
    message's end mark too."""
    messages, chars = session.execute(
        select(func.count(), func.coalesce(func.sum(func.length(Message.text) + 1), 0))
        .join(User, Message.user_id == User.id)
        .join(Channel, Message.channel_id == Channel.id)
        .where(eligible(settings), _scope(target.kind, target.ident))).one()
    return messages, chars


def corpus_chars(session: Session, settings: Settings, target: Target) -> int:
    """The size `load_corpus` would give (messages plus end-of-message marks)."""
    return corpus_size(session, settings, target)[1]


def load_corpus(session: Session, settings: Settings, target: Target) -> Corpus:
    """A person's or channel's corpus (the shared model reads `load_workspace` instead)."""
    if target.kind == "base":
        raise ValueError("the shared model reads the whole workspace: load_workspace()")
    said = [Said(*row) for row in _rows(session, settings, _scope(target.kind, target.ident))]
    return Corpus(target, said, split_point([len(m.text) + 1 for m in said]),
                  said[-1].ts if said else None, _digest([m.text for m in said]))


@dataclass
class Workspace:
    """What the shared model learns from: every eligible message of every public channel,
    channel by channel in time order (conversations stay conversations), less each covered
    person's and channel's newest 10 %, held out to score them.

    Covered (a vector of their own) are the people and public channels with at least
    `min_chars` of eligible text; everyone else trains the "anyone" vector."""

    people: list[str]  # covered user ids, most text first
    channels: list[str]  # covered public channel ids, most text first
    train: list[Said]
    val: dict[str, list[Said]]  # covered target key → its held-out messages, in time order
    chars: dict[str, int]  # covered target key → its eligible characters (+ 1 per message)
    watermark: str | None  # newest message ts
    digest: str

    @property
    def train_chars(self) -> int:
        return sum(len(m.text) + 1 for m in self.train)


def load_workspace(session: Session, settings: Settings, min_chars: int) -> Workspace:
    rows = _rows(session, settings, ~Channel.is_private)  # by ts: time order
    said = [Said(ts, user, channel, text) for ts, user, channel, text in rows]
    by: dict[str, dict[str, list[int]]] = {"user": defaultdict(list),
                                           "channel": defaultdict(list)}
    for index, m in enumerate(said):
        by["user"][m.user].append(index)
        by["channel"][m.channel].append(index)
    chars: dict[str, int] = {}
    held_out: dict[str, list[int]] = {}
    for kind, groups in by.items():
        for ident, indices in groups.items():
            lengths = [len(said[i].text) + 1 for i in indices]
            if sum(lengths) >= min_chars:
                key = f"{kind}:{ident}"
                chars[key] = sum(lengths)
                held_out[key] = indices[split_point(lengths):]
    out = {i for indices in held_out.values() for i in indices}
    ranked = sorted(chars, key=lambda k: (-chars[k], k))
    train = sorted((m for i, m in enumerate(said) if i not in out),
                   key=lambda m: m.channel)  # stable: each channel stays in time order
    return Workspace(
        people=[k.split(":", 1)[1] for k in ranked if k.startswith("user:")],
        channels=[k.split(":", 1)[1] for k in ranked if k.startswith("channel:")],
        train=train, val={k: [said[i] for i in v] for k, v in held_out.items()}, chars=chars,
        watermark=said[-1].ts if said else None,
        digest=_digest([f"covering {min_chars}", *(m.text for m in said)]))


def recent(session: Session, settings: Settings, target: Target, limit: int,
           before: str | None = None) -> list[tuple[str, str]]:
    """The target's newest `limit` eligible messages (before ts `before`), oldest first, as
    (author id, text): what a reply in its voice reads first, so that it starts where
    messages start. A person's from public channels only. Read on the session's connection:
    changes the session has not flushed are not seen."""
    query = _recent(settings.consent, tuple(settings.channels), target.kind, before is not None)
    found = session.connection().execute(
        query, {"ident": target.ident, "limit": limit, "before": before}).all()
    return [(user, text) for user, text in reversed(found)]


@functools.lru_cache(maxsize=64)
def _recent(consent: str, channels: tuple[str, ...], kind: str, before: bool
            ) -> Select[tuple[str, str]]:
    """`recent`'s statement, built once per setting and kind of target, its rows read on the
    connection: the bot reads a target's last messages on every request, and building the
    statement each time and reading through the ORM cost ~0.8 ms of its interpreter time,
    against 0.09 so (BENCHMARKS.md, fourteenth session)."""
    query = (select(Message.user_id, Message.text)
             .join(User, Message.user_id == User.id)
             .join(Channel, Message.channel_id == Channel.id)
             .where(_eligible(consent, channels), _scope(kind, bindparam("ident")))
             .order_by(Message.ts.desc()).limit(bindparam("limit")))
    return query.where(Message.ts < bindparam("before")) if before else query


_USER_NAMED = select(User).where(User.name == bindparam("name"))  # built once: asked each request


def resolve(session: Session, name: str, where: str | None = None) -> Target:
    """'@alice', '#random', 'base' (or '@U123', '#C123' by id) → Target, or a helpful error.

    `where` is the Slack channel asking: a private channel resolves only from inside itself,
    and from anywhere else gets the very answer a channel that does not exist gets. The shell
    (where=None) sees every channel.
    """
    name = name.strip()
    if name.lower() in ("base", "workspace"):
        return BASE
    # Matched in SQL: the bot resolves a name on every request, and loading every user of a
    # big workspace to compare in Python cost 30 ms of interpreter time a request.
    if name.startswith("#"):
        wanted = name[1:].lower()
        found = session.scalars(select(Channel).where(
            ~Channel.is_dm, or_(func.lower(Channel.name) == wanted,
                                func.lower(Channel.id) == wanted))).all()
        for channel in found:
            if not channel.is_private or where in (None, channel.id):
                return Target(f"channel:{channel.id}", f"#{channel.name}", channel.is_private)
        public = session.scalars(select(Channel.name).where(~Channel.is_dm,
                                                            ~Channel.is_private)).all()
        raise TargetError(f"No channel called {name}." + _closest(wanted, public, "#"))
    if name.startswith("@"):
        wanted = name[1:].lower()
        # The usual cases first, without comparing every user's four names in lower case
        # (2 ms a request): an id, as Slack's escaped mentions send, or a handle as it is.
        exact = [session.get(User, name[1:])] if is_slack_id(name[1:]) else \
            session.scalars(_USER_NAMED, {"name": wanted}).all()
        if len(exact) == 1 and exact[0] is not None and not exact[0].is_bot:
            return Target(f"user:{exact[0].id}", f"@{exact[0].name}")
        columns = (User.id, User.name, User.display_name, User.real_name)
        matches = session.scalars(select(User).where(
            ~User.is_bot, or_(*(func.lower(c) == wanted for c in columns)))).all()
        by_handle = [u for u in matches if u.name.lower() == wanted or u.id.lower() == wanted]
        if len(by_handle) == 1 or len(matches) == 1:
            user = (by_handle or matches)[0]
            return Target(f"user:{user.id}", f"@{user.name}")
        if matches:
            raise TargetError(f"{name} could mean " + ", ".join(
                f"@{u.name} ({u.real_name or u.display_name})" for u in matches[:5])
                + ". Use the handle.")
        handles = session.scalars(select(User.name).where(~User.is_bot)).all()
        raise TargetError(f"No person called {name}." + _closest(wanted, handles, "@"))
    raise TargetError(f"{name!r} is not a target: use @person, #channel or base.")


def _closest(wanted: str, names: Sequence[str], sigil: str) -> str:
    import difflib

    close = difflib.get_close_matches(wanted, names, n=3, cutoff=0.5)
    return f" Did you mean {', '.join(sigil + c for c in close)}?" if close else ""


def targets_with_data(session: Session, settings: Settings, min_chars: int) -> list[Target]:
    """Every person and public channel with at least `min_chars` of eligible text."""
    size = func.sum(func.length(Message.text) + 1)
    base = (select(size).join(User, Message.user_id == User.id)
            .join(Channel, Message.channel_id == Channel.id)
            .where(eligible(settings)))
    users = session.execute(
        base.add_columns(User.id, User.name).where(~Channel.is_private)
        .group_by(User.id, User.name).having(size >= min_chars)).all()
    channels = session.execute(
        base.add_columns(Channel.id, Channel.name, Channel.is_private)
        .group_by(Channel.id, Channel.name, Channel.is_private)
        .having(size >= min_chars)).all()
    return ([Target(f"user:{uid}", f"@{name}") for _, uid, name in
             sorted(users, key=lambda r: -r[0])]
            + [Target(f"channel:{cid}", f"#{name}", private) for _, cid, name, private in
               sorted(channels, key=lambda r: -r[0])])

