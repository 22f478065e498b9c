"""Training text from the store. `eligible()` is the one place that decides whose writing may
be learned from; every corpus query goes through it.

Targets: "base" (the workspace model), "user:<id>" (a person, from public channels) and
"channel:<id>" (everything said in one channel; a private channel's model is only served there).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from mimic.core.config import Settings
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


@dataclass
class Corpus:
    target: Target
    train: list[str]
    val: list[str]
    watermark: str | None  # newest message ts in the corpus
    digest: str  # changes with any edit, deletion or exclusion, not just new messages

    @property
    def chars(self) -> int:
        return sum(len(m) + 1 for m in self.train)


def consenting(settings: Settings) -> ColumnElement[bool]:
    """People who may be learned from and imitated, under MIMIC_CONSENT."""
    return User.opted_in if settings.consent == "opt-in" else ~User.opted_out


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
    rules = [~Message.deleted, ~User.is_bot, consenting(settings), ~Channel.is_dm]
    if settings.channels:
        rules.append(func.lower(Channel.name).in_(settings.channels))
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


def _scope(target: Target) -> ColumnElement[bool]:
    """Which eligible messages a target learns from: a person's in public channels, a
    channel's own, everyone's public ones for the base."""
    if target.kind == "user":
        return and_(Message.user_id == target.ident, ~Channel.is_private)
    if target.kind == "channel":
        return Message.channel_id == target.ident
    return ~Channel.is_private


def corpus_chars(session: Session, settings: Settings, target: Target) -> int:
    """The size `load_corpus` would give (messages plus end-of-message marks), cheaply."""
    return session.scalar(
        select(func.coalesce(func.sum(func.length(Message.text) + 1), 0))
        .join(User, Message.user_id == User.id)
        .join(Channel, Message.channel_id == Channel.id)
        .where(eligible(settings), _scope(target))) or 0


def load_corpus(session: Session, settings: Settings, target: Target) -> Corpus:
    if target.kind == "base":
        return _base_corpus(session, settings)
    rows = _rows(session, settings, _scope(target))
    texts = [r[3] for r in rows]
    cut = split_point([len(t) + 1 for t in texts])
    return Corpus(target, texts[:cut], texts[cut:], rows[-1][0] if rows else None,
                  _digest(texts))


def _base_corpus(session: Session, settings: Settings) -> Corpus:
    """Every eligible public message, less each person's and channel's validation messages, so
    a model fine-tuned from the base is never scored on text the base has already seen."""
    rows = _rows(session, settings, _scope(BASE))
    held_out: set[int] = set()
    for column in (1, 2):  # per user, per channel
        groups: dict[str, list[int]] = defaultdict(list)
        for index, row in enumerate(rows):
            groups[row[column]].append(index)
        for indices in groups.values():
            cut = split_point([len(rows[i][3]) + 1 for i in indices])
            held_out.update(indices[cut:])
    train = [r[3] for i, r in enumerate(rows) if i not in held_out]
    val = [r[3] for i, r in enumerate(rows) if i in held_out]
    return Corpus(BASE, train, val, rows[-1][0] if rows else None,
                  _digest([r[3] for r in rows]))


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

