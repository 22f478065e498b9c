"""How much of a reply's context matters, and what reading it costs.

A reply is written after the messages before it (a mention: its thread; `/mimic`: the
target's own last messages), read from a zero state up to PRIMED_CHARS of their newest
characters. This scores the 15 targets of `bench.quality` (or the 15 biggest senders) on their
held-out messages, each read after the 5 messages before it in its channel cut to N characters
(the loss over the message's own characters only), and times one packed read of 20 such
contexts at each N, on the workspace model `bench.quality` trained:

    .venv/bin/python -m bench.context [--folder data/bench/quality]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.quality import context_loss, timelines
from bench.workspace import chitchat, machine
from mimic.trainer.corpus import BASE, load_workspace
from mimic.trainer.model import load_model
from mimic.trainer.registry import WEIGHTS, active_version, version_dir
from mimic.trainer.report import covered_people
from mimic.trainer.sampler import CONTEXT_MESSAGES, PRIMED_CHARS, Primer

CUTS = (0, 5, 10, 25, 32, 50, 100, 200, None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=Path("data/bench/quality"),
                   help="a chitchat workspace with a trained model (default: bench.quality's)")
    p.add_argument("--messages", type=int, default=60, help="held-out messages per target")
    args = p.parse_args()
    torch.set_num_threads(1)  # as `mimic serve` reads
    print(f"machine: {machine()}")
    store, settings = chitchat(args.folder, refresh=False, MIMIC_DEVICE="cpu")
    with store.session() as session:
        row = active_version(session, BASE.key)
        if row is None:
            sys.exit("no workspace model here: run `python -m bench.quality` first")
        model, vocab, slots = load_model(version_dir(settings.data_dir, row) / WEIGHTS, "cpu")
        workspace = load_workspace(session, settings, settings.min_chars)
    assert vocab is not None
    chosen = args.folder / "targets.json"
    keys = ([t["key"] for group in json.loads(chosen.read_text()).values() for t in group]
            if chosen.exists() else [t.key for t, _ in covered_people(store, settings)][:15])
    by_channel = timelines(workspace)
    losses = [context_loss(model, vocab, slots, key, workspace.val[key], by_channel,
                           limit=args.messages, cuts=CUTS) for key in keys]
    # 20 contexts as a burst of mentions brings them: the 5 messages before 20 held-out ones.
    contexts = []
    for key in keys:
        for message in workspace.val[key][-2:]:
            channel = by_channel[message.channel]
            index = next(i for i, m in enumerate(channel) if m.ts == message.ts)
            contexts.append(tuple((slots.person(m.user), slots.channel(m.channel), m.text)
                                  for m in channel[max(0, index - CONTEXT_MESSAGES):index]))
    contexts = [c for c in contexts if c][:20]
    print(f"workspace model v{row.version}, {len(keys)} targets, up to {args.messages} held-out "
          f"messages each, read after the {CONTEXT_MESSAGES} messages before each in its channel")
    print(f"{'characters read':>16}{'loss':>10}{'vs all':>10}{'read 20 (ms)':>14}")
    everything = statistics.mean(loss[-1] for loss in losses)
    for which, cut in enumerate(CUTS):
        loss = statistics.mean(per[which] for per in losses)
        timings = []
        for _ in range(3 if cut != 0 else 0):
            primer = Primer(vocab, chars=cut or 10**9)  # empty: nothing cached
            start = time.perf_counter()
            primer.read(model, contexts)
            timings.append(time.perf_counter() - start)
        read = f"{min(timings) * 1e3:.0f}" if timings else "-"
        mark = " (PRIMED_CHARS)" if cut == PRIMED_CHARS else ""
        label = "all" if cut is None else str(cut)
        print(f"{label:>16}{loss:>10.4f}{loss - everything:>+10.4f}{read:>14}{mark}")


if __name__ == "__main__":
    main()
