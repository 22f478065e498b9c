"""The nightly run, warm-started: how long does a day's new messages take, and is anything
forgotten?

On a copy of the chitchat workspace without its newest day's worth of messages (the average
day: messages / days they span), trains the shared model from scratch (--minutes, one thread),
then brings the held-back messages in through the same importer (as the nightly export would)
and runs the nightly job's training: warm start from the active model, the new messages plus a
replay of older ones. Prints its CPU time, and the loss before and after on the first model's
validation sets (every covered person's held-out messages: nothing may get worse), and on the
new messages' authors.

    .venv/bin/python -m bench.nightly [--minutes 10]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import torch
from sqlalchemy import delete, func, select

from bench.workspace import chitchat, machine
from mimic.core.config import Settings
from mimic.core.store import Message, ModelVersion, make_engine
from mimic.exporter.importer import import_export
from mimic.trainer.corpus import BASE, Workspace, load_workspace
from mimic.trainer.model import load_model
from mimic.trainer.registry import WEIGHTS, active_version, version_dir
from mimic.trainer.shared import loss_on
from mimic.trainer.train import train


def per_person(settings: Settings, row: ModelVersion, workspace: Workspace
               ) -> dict[str, float]:
    """Each covered person's loss (first 4,000 held-out characters) under `row`."""
    model, vocab, slots = load_model(version_dir(settings.data_dir, row) / WEIGHTS)
    assert vocab is not None
    return {key: loss_on(model, vocab, slots, key, messages, max_chars=4000)
            for key, messages in workspace.val.items() if key.startswith("user:")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0,
                   help="the first model's budget, one thread (default 10)")
    p.add_argument("--source", type=Path, default=Path("data/bench/quality"),
                   help="a chitchat folder whose database and export to start from")
    p.add_argument("--folder", type=Path, default=Path("data/bench/nightly"))
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {machine()}")
    chitchat(args.source)  # the export and database exist
    shutil.rmtree(args.folder, ignore_errors=True)
    args.folder.mkdir(parents=True)
    shutil.copy(args.source / "mimic.db", args.folder / "mimic.db")
    store, settings = chitchat(args.folder, refresh=False, MIMIC_DEVICE="cpu")
    with store.session() as session:
        count, first, last = session.execute(select(
            func.count(), func.min(Message.ts), func.max(Message.ts))).one()
        days = (float(last) - float(first)) / 86_400
        day = round(count / days)
        cutoff = session.scalars(select(Message.ts).order_by(Message.ts.desc())
                                 .offset(day).limit(1)).one()
        session.execute(delete(Message).where(Message.ts > cutoff))
    print(f"{count:,} messages over {days:.0f} days: the newest {day:,} (an average day) held "
          f"back; the first model trains {args.minutes:g} min from scratch")
    first_outcome = train(store, settings, BASE, minutes=args.minutes,
                          train_overrides={"num_threads": 1}, fresh=True)
    print(f"first model: {first_outcome.describe()}")
    with store.session() as session:
        before_row = active_version(session, BASE.key)
        old_workspace = load_workspace(session, settings, settings.min_chars)
        session.expunge(before_row)

    summary = import_export(store, args.source / "chitchat-export.zip")
    print(f"the day comes in: {summary.new:,} new messages")
    cpu, wall = time.process_time(), time.perf_counter()
    outcome = train(store, settings, BASE, train_overrides={"num_threads": 1})
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"nightly run: {outcome.describe()}")
    print(f"nightly run took {cpu / 60:.2f} CPU-minutes ({wall / 60:.2f} min wall; goal <= 5)")
    with store.session() as session:
        after_row = active_version(session, BASE.key)
        new = session.execute(select(Message.user_id, func.sum(func.length(Message.text) + 1))
                              .where(Message.ts > cutoff).group_by(Message.user_id)).all()
        session.expunge(after_row)
    before = per_person(settings, before_row, old_workspace)
    after = per_person(settings, after_row, old_workspace)
    common = [k for k in before if k in after]
    worse = [k for k in common if after[k] > before[k] + 0.01]
    mean_before = statistics.mean(before[k] for k in common)
    mean_after = statistics.mean(after[k] for k in common)
    print(f"old validation sets, {len(common)} people: mean {mean_before:.4f} -> "
          f"{mean_after:.4f} nats/char; {len(worse)} worse by more than 0.01")
    authors = [f"user:{u}" for u, _chars in new if f"user:{u}" in common]
    if authors:
        print(f"the day's {len(authors)} authors: {statistics.mean(before[k] for k in authors):.4f}"
              f" -> {statistics.mean(after[k] for k in authors):.4f}")
    make_engine(settings.database_url).dispose()


if __name__ == "__main__":
    main()
