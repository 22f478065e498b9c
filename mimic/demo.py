"""`mimic demo`: the whole loop on real chat data, no Slack tokens needed.

Builds the chitchat demo workspace, imports it through the same importer users run, trains the
workspace model (one for everyone, conditioned on who writes and where) within a time budget,
then plays real slash commands through the same Responder the Slack app uses, printing what
Slack would show: a big talker, a channel, and someone with only a few messages.
"""

from __future__ import annotations

import html
import shutil
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.text import Text
from sqlalchemy import select

from mimic.bot.app import payload
from mimic.bot.models import ModelCache
from mimic.bot.replies import Responder
from mimic.core.config import Settings
from mimic.core.lock import retrain_lock
from mimic.core.store import Channel, Store, User, make_engine, upgrade
from mimic.exporter.demo_data import build_demo_export
from mimic.exporter.importer import import_export
from mimic.trainer.corpus import BASE, Target, corpus_chars, recent, targets_with_data
from mimic.trainer.registry import active_version
from mimic.trainer.sampler import CONTEXT_MESSAGES
from mimic.trainer.train import TrainError, train

SMALL_RANGE = (1_000, 5_000)  # characters: someone with little history, still imitated


@dataclass
class DemoPlan:
    big: Target | None
    small: Target | None
    channel: Target | None


def as_slack_shows(text: str) -> str:
    """A reply as Slack renders it: entities shown as characters, `>` lines as quotes."""
    lines = html.unescape(text).split("\n")
    return "\n".join("▌ " + line[1:] if line.startswith(">") else line for line in lines)


def mention_in_thread(store: Store, settings: Settings, responder: Responder, channel: Channel,
                      target: Target, console: Console) -> str:
    """`@mimic be @target` said in a thread of the channel's last real messages, answered in
    the thread as the Slack app does (the messages are what it would read from Slack)."""
    with store.session() as session:
        said = recent(session, settings, Target(f"channel:{channel.id}", channel.name),
                      CONTEXT_MESSAGES - 1)
        names = {uid: name for uid, name in session.execute(
            select(User.id, User.name).where(User.id.in_({a for a, _t in said})))}
    ask = f"be {target.label}"
    # Another asker: the slash commands above used up UDEMO's requests for this minute.
    reply = responder.mention("UDEMO2", channel.id, f"<@UMIMIC> {ask}", "UMIMIC",
                              lambda: said)
    answer = payload(reply)["text"]
    thread = [f"@{names.get(author, author)}: {text}" for author, text in said]
    thread += [f"you: @mimic {ask}", "", "↳ mimic, in the thread:",
               as_slack_shows(answer)]
    console.print(Panel(Text("\n".join(thread)), title=f"#{channel.name} · a thread",
                        subtitle="app_mention → reply in the thread", title_align="left"))
    return answer


def demo_settings(settings: Settings, folder: Path) -> Settings:
    """The demo keeps to its own folder and database, away from a real workspace's."""
    return settings.model_copy(update={"data_dir": folder,
                                       "database_url": f"sqlite:///{folder}/mimic.db"})


def plan(store: Store, settings: Settings) -> DemoPlan:
    """The person with the most text, one with only a few messages, the biggest channel."""
    with store.session() as session:
        every = targets_with_data(session, settings, settings.min_chars)
        people = [t for t in every if t.kind == "user"]
        small = next((t for t in reversed(people)
                      if SMALL_RANGE[0] <= corpus_chars(session, settings, t) <= SMALL_RANGE[1]),
                     None)
    channels = [t for t in every if t.kind == "channel" and not t.private]
    return DemoPlan(people[0] if people else None, small, channels[0] if channels else None)


def run_demo(settings: Settings, folder: Path, *, minutes: float = 5.0, fresh: bool = False,
             console: Console | None = None, limit: int | None = None) -> list[str]:
    """Run the demo; returns the texts Slack would have shown, in order."""
    console = console or Console()
    if fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    settings = demo_settings(settings, folder)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    store = Store(engine)

    export = folder / "demo-export.zip"
    if not export.exists():
        console.rule("1 · a workspace from real chat data")
        stats = build_demo_export(export, limit_conversations=limit)
        console.print(f"Built {export}: {stats.messages:,} messages by {stats.users:,} people "
                      f"in {stats.channels} channels (one private: #{stats.private_channel}).")
    console.rule("2 · mimic import")
    summary = import_export(store, export, allow=settings.channel_allowed, progress=console)
    console.print(f"{summary.kept:,} messages kept ({summary.new:,} new), "
                  f"{sum(summary.dropped.values()):,} dropped: "
                  + ", ".join(f"{k} {v:,}" for k, v in summary.dropped.most_common()))

    console.rule("3 · mimic train")
    with retrain_lock(settings):  # as `mimic train` does: one trainer at a time
        with store.session() as session:
            trained = active_version(session, BASE.key) is not None
        if trained:
            console.print("workspace model: trained already (`--fresh` to start over)")
        else:
            try:
                console.print(train(store, settings, BASE, minutes=minutes,
                                    console=console).describe())
            except TrainError as exc:
                console.print(f"workspace model: {exc}")
    chosen = plan(store, settings)

    console.rule("4 · what Slack shows")
    responder = Responder(settings, store, ModelCache(settings.data_dir))
    with store.session() as session:
        here = session.scalars(select(Channel).where(~Channel.is_private)
                               .order_by(Channel.name)).first()
        private = session.scalars(select(Channel).where(Channel.is_private)).first()
    channel_id = here.id if here else ""
    script = []
    if chosen.big is not None:
        script.append(chosen.big.label)
    if chosen.channel is not None:
        script.append(f"{chosen.channel.label} temp=1.2")
    if chosen.small is not None:  # a few messages are enough to be imitated now
        with store.session() as session:
            few = corpus_chars(session, settings, chosen.small)
        console.print(f"{chosen.small.label} has written only {few:,} characters.")
        script.append(f'{chosen.small.label} "I think we should"')
        if chosen.big is not None:  # two voices taking turns, each answering the last
            script.append(f"{chosen.big.label} {chosen.small.label} turns=4")
    script += ["list"]
    if chosen.big is not None:
        script += [f"list {chosen.big.label[1:4]}", f"{chosen.big.label} temp=5"]
    if private is not None:
        script.append(f"#{private.name}")  # asked from a public channel: it stays hidden
    shown = []
    try:
        for text in script:
            reply = responder.handle("UDEMO", channel_id, text)
            body = payload(reply)
            shown.append(body["text"])
            console.print(Panel(Text(as_slack_shows(body["text"])), title=f"/mimic {text}",
                                subtitle=body["response_type"], title_align="left"))
        if chosen.big is not None and here is not None:
            shown.append(mention_in_thread(store, settings, responder, here, chosen.big,
                                           console))
    finally:
        responder.close()
    console.rule()
    console.print("That was mimic on real chat data. To connect your own workspace, see "
                  "README.md → [bold]Connecting a real workspace[/bold].")
    return shown
