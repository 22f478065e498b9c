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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mimic.bot.batching import Closed, SampleBatcher
from mimic.bot.commands import USAGE, Mimic, OptOut, ParseError, Retrain, TargetRef, parse
from mimic.bot.models import ModelCache
from mimic.core.config import Settings
from mimic.core.ids import is_slack_id
from mimic.core.inert import make_inert
from mimic.core.store import Channel, Message, ModelVersion, Run, Store, User
from mimic.trainer.corpus import BASE, Target, TargetError, corpus_chars, may_imitate, resolve
from mimic.trainer.privacy import opt_in, opt_out
from mimic.trainer.registry import active_version, parent_of
from mimic.trainer.sampler import NoNovelText, Row, reply

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reply:
    text: str
    public: bool = False  # in_channel for everyone, else ephemeral to the caller


class RateLimiter:
    """At most `per_minute` requests per user in any sliding 60 s."""

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
    "• `/mimic list`: who and what can be mimicked · `/mimic status`: data, models, next "
    "training\n"
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
        self.limiter = RateLimiter(settings.rate_limit)

    def close(self) -> None:
        """Stop the sampling thread (requests still waiting are told mimic is stopping)."""
        self.batcher.close()

    def handle(self, user_id: str, channel_id: str, text: str,
               followup: Callable[[Reply], None] = lambda _reply: None) -> Reply:
        if not is_slack_id(user_id) or not (channel_id == "" or is_slack_id(channel_id)):
            return Reply("This request did not come with Slack's user and channel ids, so I "
                         "can't answer it.")
        try:
            command = parse(text)
            if isinstance(command, Mimic):
                return self.mimic(user_id, channel_id, command)
            if isinstance(command, OptOut):
                return self.optout(user_id, command.forget)
            if isinstance(command, Retrain):
                return self.retrain(user_id, channel_id, command.target, followup)
            return {"help": lambda: Reply(HELP), "list": lambda: self.list(channel_id),
                    "status": self.status, "optin": lambda: self.optin(user_id),
                    }[command.verb]()
        except ParseError as exc:
            return Reply(str(exc))
        except Closed:
            return Reply("mimic is restarting; please try again in a minute.")
        except TargetError as exc:
            return Reply(f"{exc} {USAGE}")
        except Exception:
            log.exception("/mimic %r failed", text[:100])
            return Reply("Something went wrong on mimic's side; the admins can find the "
                         "details in its log. Please try again in a minute.")

    # -- targets ---------------------------------------------------------------------------

    def _target(self, ref: TargetRef, channel_id: str) -> Target:
        with self.store.session() as session:
            return resolve(session, f"{ref.sigil}{ref.id or ref.name}", where=channel_id)

    # -- commands --------------------------------------------------------------------------

    def mimic(self, user_id: str, channel_id: str, command: Mimic) -> Reply:
        wait = self.limiter.allow(user_id)
        if wait:
            return Reply(f"Easy there: mimic answers {self.settings.rate_limit} requests a "
                         f"minute per person. Try again in {wait:.0f} s.")
        target = self._target(command.target, channel_id)
        with self.store.session() as session:
            if target.kind == "user":
                person = session.get(User, target.ident)
                if person is not None and not may_imitate(person, self.settings):
                    why = ("has opted out of mimic" if person.opted_out else
                           "hasn't opted in to mimic (this workspace asks people first: "
                           "`/mimic optin`)")
                    return Reply(f"{target.label} {why}, so I won't imitate them.")
            row = active_version(session, target.key)
            if row is None:
                return Reply(self._no_model(session, target))
            parent = parent_of(session, row)
        try:
            loaded = self.cache.get(row, parent)
            wanted = Row(command.seed, command.temperature)
            result = reply(loaded, temperature=command.temperature, seed_text=command.seed,
                           sampler=lambda k: self.batcher.sample(loaded, [wanted] * k))
        except NoNovelText:
            return Reply(f"Every message I drew for {target.label} repeated their own words "
                         "too closely, so I won't post it. Try a higher temperature, e.g. "
                         f"`/mimic {target.label} temp=1.1`.")
        header = (f"_mimicking {target.label} · temp {command.temperature:g} · model "
                  f"v{loaded.version} · generated text, not a real message_")
        return Reply(f"{make_inert(header)}\n{quoted(result.texts[0])}", public=True)

    def _no_model(self, session: Session, target: Target) -> str:
        chars = corpus_chars(session, self.settings, target)
        if chars < self.settings.min_chars:
            return (f"{target.label} has {chars:,} characters of messages I may learn from; a "
                    f"model needs at least {self.settings.min_chars:,}, so there is none yet.")
        return (f"There is no model for {target.label} yet. The next training runs "
                f"{next_training(self.settings)}; an admin can start it now with "
                f"`/mimic retrain {target.label}`.")

    def list(self, channel_id: str) -> Reply:
        with self.store.session() as session:
            rows = session.execute(
                select(ModelVersion, User, Channel)
                .outerjoin(User, ModelVersion.target == "user:" + User.id)
                .outerjoin(Channel, ModelVersion.target == "channel:" + Channel.id)
                .where(ModelVersion.status == "active", ModelVersion.target != BASE.key)
                .order_by(ModelVersion.val_loss)).all()
            lines = []
            for version, user, channel in rows:
                if user is not None and may_imitate(user, self.settings):
                    label = f"@{user.name}"
                elif channel is not None and (not channel.is_private
                                              or channel.id == channel_id):
                    label = f"#{channel.name}"
                else:
                    continue
                lines.append(f"• {make_inert(label)}: v{version.version}, "
                             f"{_quality(version.val_loss)} ({version.val_loss:.2f} nats/char)")
        if not lines:
            return Reply("No models yet. An admin can run `/mimic retrain`, or wait for the "
                         f"nightly training ({next_training(self.settings)}).")
        return Reply("*Who I can mimic* (lower loss imitates better):\n" + "\n".join(lines))

    def status(self) -> Reply:
        with self.store.session() as session:
            messages = session.scalar(select(func.count()).select_from(Message)) or 0
            last = session.scalars(select(Run).order_by(Run.id.desc())).first()
            active = session.scalar(select(func.count()).select_from(ModelVersion)
                                    .where(ModelVersion.status == "active")) or 0
            pending = session.scalar(select(func.count()).select_from(User)
                                     .where(User.opted_out)) or 0
        lines = [f"• {messages:,} messages stored; {active} active models",
                 f"• last {last.kind}: {last.started_at:%Y-%m-%d %H:%M} UTC ({last.status})"
                 if last else "• nothing imported or exported yet",
                 f"• next training: {next_training(self.settings)}"]
        if pending:
            lines.append(f"• {pending} people opted out: models that learned from them are "
                         "retrained without them at the next run")
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

    def retrain(self, user_id: str, channel_id: str, ref: TargetRef | None,
                followup: Callable[[Reply], None]) -> Reply:
        if not (user_id in self.settings.admins or self.is_admin(user_id)):
            return Reply("Sorry, only mimic's admins can start a retraining. It also runs by "
                         f"itself {next_training(self.settings)}.")
        target = self._target(ref, channel_id) if ref else None
        if self.start_retrain is None or not self.start_retrain(target, followup):
            return Reply("A retraining run is already going; I'll only start one at a time. "
                         "`/mimic status` shows when it's done.")
        what = target.label if target else "everything that changed"
        return Reply(f"Retraining {what}: exporting new messages, then training. I'll post "
                     "progress and the results here.")


def _quality(loss: float) -> str:
    return "great" if loss < 1.5 else "good" if loss < 1.8 else "rough" if loss < 2.2 else \
        "babbling"

