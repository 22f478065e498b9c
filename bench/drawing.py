"""How should a message be drawn? Compares settings of the sampler on the same models.

On the models `bench.quality` trained (the 10 biggest chitchat senders), draws 100 messages per
person and seed for each setting (boost against the workspace model, temperature, end-mark
odds; see trainer/sampler.py) and prints what `mimic eval` measures: style fidelity (the
author classifier on groups of five), fluency (words the workspace uses), mean length against
the person's real held-out messages, and the LSTM rows stepped per message (the cost).

    .venv/bin/python -m bench.drawing [--seeds 2] [SETTING ...]   # SETTING: boost,temp,odds
"""

from __future__ import annotations

import argparse
import statistics
import time
import zlib
from pathlib import Path

import torch

from bench.workspace import chitchat, machine
from mimic.trainer.corpus import BASE, load_corpus
from mimic.trainer.novelty import WINDOW
from mimic.trainer.registry import LoadedModel, active_version, load_version, parent_of
from mimic.trainer.report import Attributor, default_targets, fluency, words
from mimic.trainer.sampler import BOOST, DEFAULT_TEMPERATURE, END_ODDS, Generation, Row

SAMPLES = 100
DEFAULTS = f"{BOOST:g},{DEFAULT_TEMPERATURE:g},{END_ODDS:g}"
SETTINGS = ["0,0.6,1", "0,0.6,2", "0,1,1", "1,0.6,1", f"{DEFAULTS}", "0.5,0.6,2", "1,0.8,2",
            "1,0.6,3"]


def draw(loaded: LoadedModel, boost: float, temperature: float, odds: float,
         seed: int) -> tuple[list[str], int]:
    """SAMPLES novel, non-blank messages (fewer if some are refused) and the rows stepped."""
    generation = Generation(loaded.model, loaded.vocab, reference=loaded.reference,
                            boost=boost, end_odds=odds,
                            generator=torch.Generator().manual_seed(seed))
    ids = generation.add([Row("", temperature)] * SAMPLES)
    stepped = 0
    while generation.active:
        stepped += len(generation)
        generation.step()
    texts = generation.take(ids) or []
    return [t for t in texts if t.strip() and not loaded.novelty.has_copy(t, WINDOW)], stepped


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("settings", nargs="*", default=SETTINGS,
                   help=f"boost,temperature,end-odds triples (default: {' '.join(SETTINGS)})")
    p.add_argument("--seeds", type=int, default=2, help="seeds per setting (default 2)")
    p.add_argument("--folder", type=Path, default=Path("data/bench/quality"),
                   help="a chitchat workspace with trained models (default: bench.quality's)")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {machine()}")
    store, settings = chitchat(args.folder, refresh=False, MIMIC_DEVICE="cpu")
    people = default_targets(store, settings)
    if not people:
        raise SystemExit(f"no trained people in {args.folder}: run `python -m bench.quality`")
    with store.session() as session:
        workspace = {w for t in load_corpus(session, settings, BASE).train for w in words(t)}
        chosen = []
        for person in people:
            row = active_version(session, person.key)
            parent = parent_of(session, row)
            session.expunge(row)
            chosen.append((person, load_version(settings.data_dir, row, "cpu", parent),
                           load_corpus(session, settings, person)))
    attributor = Attributor({person.label: corpus.train for person, _m, corpus in chosen})
    real = [len(t) for _p, _m, corpus in chosen for t in corpus.val[-SAMPLES:]]
    print(f"{len(chosen)} people, {SAMPLES} messages each per seed, {args.seeds} seeds; real "
          f"held-out messages: {statistics.mean(real):.0f} chars on average")
    print(f"{'boost,temp,odds':>16} {'fidelity':>9} {'fluency':>8} {'chars':>6} "
          f"{'rows/msg':>9} {'seconds':>8}")
    for setting in args.settings:
        boost, temperature, odds = (float(x) for x in setting.split(","))
        fidelity, fluent, lengths, stepped, served = [], [], [], 0, 0
        start = time.perf_counter()
        for seed in range(args.seeds):
            for person, loaded, corpus in chosen:
                texts, rows = draw(loaded, boost, temperature, odds,
                                   seed * 1_000_003 + zlib.crc32(person.key.encode()))
                stepped, served = stepped + rows, served + len(texts)
                fidelity.append(attributor.accuracy(texts, person.label))
                fluent.append(fluency(texts, workspace | {w for t in corpus.train
                                                          for w in words(t)}))
                lengths += [len(t) for t in texts]
        mark = "  (default)" if setting == DEFAULTS else ""
        print(f"{setting:>16} {statistics.mean(fidelity):>9.3f} {statistics.mean(fluent):>8.3f} "
              f"{statistics.mean(lengths):>6.0f} {stepped / served:>9.0f} "
              f"{time.perf_counter() - start:>8.0f}{mark}", flush=True)


if __name__ == "__main__":
    main()
