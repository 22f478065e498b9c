"""`mimic demo`: the whole loop on real chat data, no Slack tokens needed.

Builds the chitchat demo workspace, imports it through the same importer users run, trains
the base model and a handful of people and channels within a time budget, then plays real
slash commands through the same Responder the Slack app uses, printing what Slack would show.
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
from mimic.core.store import Channel, Store, make_engine, upgrade
from mimic.exporter.demo_data import build_demo_export
from mimic.exporter.importer import import_export
from mimic.trainer.corpus import BASE, Target, targets_with_data
from mimic.trainer.registry import active_version
from mimic.trainer.train import TrainError, train

# The base gets half the budget: every fine-tune starts from it.
BASE_SHARE = 0.5
BIG, SMALL, CHANNELS = 3, 2, 2
SMALL_RANGE = (10_000, 30_000)  # characters: people with little history


@dataclass
class DemoPlan:
    people: list[Target]
    small: list[Target]
    channels: list[Target]

    @property
    def targets(self) -> list[Target]:
        return self.people + self.small + self.channels


def as_slack_shows(text: str) -> str:
    """A reply as Slack renders it: entities shown as characters, `>` lines as quotes."""
    lines = html.unescape(text).split("\n")
    return "\n".join("▌ " + line[1:] if line.startswith(">") else line for line in lines)


def demo_settings(settings: Settings, folder: Path) -> Settings:
    """The demo keeps to its own folder and database, away from a real workspace's."""
    return settings.model_copy(update={"data_dir": folder,
                                       "database_url": f"sqlite:///{folder}/mimic.db"})


def plan(store: Store, settings: Settings) -> DemoPlan:
    """A few big and a few small people, and the two biggest public channels."""
    from mimic.trainer.corpus import corpus_chars

    with store.session() as session:
        every = targets_with_data(session, settings, settings.min_chars)
        people = [t for t in every if t.kind == "user"]
        small = [t for t in people
                 if SMALL_RANGE[0] <= corpus_chars(session, settings, t) <= SMALL_RANGE[1]]
    channels = [t for t in every if t.kind == "channel" and not t.private]
    return DemoPlan(people[:BIG], small[:SMALL], channels[:CHANNELS])


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
    chosen = plan(store, settings)
    seconds = minutes * 60
    per_target = seconds * (1 - BASE_SHARE) / max(1, len(chosen.targets))
    with retrain_lock(settings.data_dir):  # as `mimic train` does: one trainer at a time
        for target, budget in [(BASE, seconds * BASE_SHARE)] + [(t, per_target)
                                                               for t in chosen.targets]:
            with store.session() as session:
                if active_version(session, target.key) is not None:
                    console.print(f"{target.label}: trained already (`--fresh` to start over)")
                    continue
            try:
                outcome = train(store, settings, target, minutes=budget / 60, console=console)
                console.print(outcome.describe())
            except TrainError as exc:
                console.print(f"{target.label}: {exc}")

    console.rule("4 · what Slack shows")
    responder = Responder(settings, store, ModelCache(settings.data_dir))
    with store.session() as session:
        here = session.scalars(select(Channel).where(~Channel.is_private)
                               .order_by(Channel.name)).first()
        private = session.scalars(select(Channel).where(Channel.is_private)).first()
    channel_id = here.id if here else ""
    script = [f"{t.label}" for t in chosen.people[:1]]
    script += [f"{t.label} temp=1.2" for t in chosen.channels[:1]]
    script += [f'{t.label} "I think we should"' for t in chosen.small[:1] or chosen.people[1:2]]
    script += ["list"]
    script += [f"{t.label} temp=5" for t in chosen.people[:1]]
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
    finally:
        responder.close()
    console.rule()
    console.print("That was mimic on real chat data. To connect your own workspace, see "
                  "README.md → [bold]Connecting a real workspace[/bold].")
    return shown
