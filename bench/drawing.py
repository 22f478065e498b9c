"""How should a message be drawn? Compares settings of the sampler on the same trained model.

For the 10 biggest people a model imitates (or, with --chars, people drawn at random from a
range of sizes; --people says how many), draws 100 messages per person and seed for each
setting and prints what `mimic eval` measures, each beside the people's own real held-out
messages (all of them; variety over the newest 100) and training messages: style fidelity
(the author classifier on groups of five), what a reader sees (first word real, capitalised
starts, real words, distinct word pairs) and length; and the LSTM rows stepped per message
(the cost).

A setting is `boost,temp,odds[,prime[,guard[,plausible[,long[,words[,case]]]]]]`: the weight
of the contrast with anyone (see trainer/sampler.py: BOOST; "own": each row's, growing with the
words the model read of its person, `boost_for`, or the lower one the trainer fitted to them,
`own_boost`; DEDICATED_BOOST for a dedicated model), the
temperature asked (a dedicated model's rows are drawn DEDICATED_HEAT x hotter), the end mark's
odds factor ("fit": the one fitted to the model's people when it was trained, times each fitted
person's own, trainer/lengths.py), how many of the person's last messages are read first (0:
start from an end mark alone), whether the word guard is on (1) or off (0), the plausibility
floor (PLAUSIBLE), whether replies past the workspace's long-message length are drawn to an end
(1, LONG_QUANTILE) or not (0), and how much each person's own words are preferred ("own":
SMALL_OWN_WORDS to OWN_WORDS, growing with the words counted of them; 0: not at all;
trainer/wording.py) and whether a reply's first letter follows its
person's messages ("own": CASE_PRIOR) or the model's odds alone (0). Besides the mean length,
"long" is the share of messages longer than 99 % of the workspace's, "stutters" the share where a
word follows itself ("just just"), "cut" the share that ran to
the 280-character cut (MAX_LEN, and stopped there, mid-word as a rule), and "case off" how far
each person's share of capitalised starts is from their training messages' and from their
held-out messages' (in points, the mean over people; a few held-out messages make the second
a coarse figure).

    .venv/bin/python -m bench.drawing [--seeds 2] [--folder F] [--chars 1000-20000] [--people N]
                                      [SETTING ...]
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time
import zlib
from dataclasses import replace
from pathlib import Path

import torch

from bench.workspace import chitchat, machine
from mimic.trainer.corpus import load_corpus, load_workspace, recent
from mimic.trainer.lexicon import WordGuard
from mimic.trainer.novelty import WINDOW
from mimic.trainer.reading import Reading, Vocabulary, long_length, read
from mimic.trainer.registry import LoadedModel, load_version, serving
from mimic.trainer.report import (
    Attributor,
    default_targets,
    random_targets,
    real_reading,
    training_reading,
)
from mimic.trainer.sampler import DEFAULT_TEMPERATURE, MAX_LEN, PLAUSIBLE, Generation

SAMPLES = 100
PRIME = 3
DEFAULTS = f"own,{DEFAULT_TEMPERATURE:g},fit,{PRIME},1"
SETTINGS = ["0,0.6,2,3,1", DEFAULTS, "1,0.6,2,0,1", "1,0.6,2,3,0", "2,0.6,2,3,1",
            "1,0.8,2,3,1", "1,1,2,3,1"]
SHOWN = ("first_word_real", "capitalised", "real_words", "real_pairs", "distinct_2")


def draw(loaded: LoadedModel, key: str, context: list[tuple[str, str]], setting: list[float],
         seed: int) -> tuple[list[str], int]:
    """SAMPLES novel, non-blank messages (fewer if some are refused) and the rows stepped."""
    boost, temperature, odds, prime, guard, plausible, long, weight, case = setting
    generation = Generation(loaded.model, loaded.vocab, reference=loaded.reference,
                            guard=guarded(loaded, weight) if guard else None,
                            plausible=plausible, generator=torch.Generator().manual_seed(seed))
    row = loaded.row(key, temperature=temperature,
                     context=context[max(0, len(context) - int(prime)):] if prime else [])
    row = row if long else replace(row, long_after=0)
    row = row if math.isnan(odds) else replace(row, end_odds=odds)
    row = row if math.isnan(boost) else replace(row, boost=boost)
    row = row if math.isnan(case) else replace(row, capitals=(0, 0))
    ids = generation.add([row] * SAMPLES)
    stepped = 0
    while generation.active:
        stepped += len(generation)
        generation.step()
    texts = generation.take(ids) or []
    return [t for t in texts if t.strip() and not loaded.novelty.has_copy(t, WINDOW)], stepped


@functools.cache
def _guard(guard: WordGuard, weight: float) -> WordGuard:
    return WordGuard(guard.lexicon, guard.vocab, guard.wording, weight)


def guarded(loaded: LoadedModel, weight: float) -> WordGuard | None:
    """The model's word guard, weighing its targets' own words `weight` times (nan: its
    own weights, by how many words were counted of each); one guard per weight, so that its
    caches last the run."""
    if loaded.guard is None or math.isnan(weight):
        return loaded.guard
    return _guard(loaded.guard, weight)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("settings", nargs="*", default=SETTINGS,
                   help=f"boost,temp,odds,prime,guard (default: {' '.join(SETTINGS)})")
    p.add_argument("--seeds", type=int, default=2, help="seeds per setting (default 2)")
    p.add_argument("--folder", type=Path, default=Path("data/bench/quality"),
                   help="a workspace with a trained model (default: bench.quality's)")
    p.add_argument("--chars", help="MIN-MAX: --people drawn at random from this range")
    p.add_argument("--people", type=int, help="how many people (default: the 10 biggest, or "
                   "20 drawn with --chars); a small held-out set is a coarse figure, so more "
                   "people make the real columns steadier")
    args = p.parse_args()
    if args.people is not None and args.people < 2:
        p.error(f"--people {args.people}: at least 2 (style fidelity tells people apart)")
    torch.set_num_threads(1)
    print(f"machine: {machine()}")
    store, settings = chitchat(args.folder, refresh=False, MIMIC_DEVICE="cpu")
    if args.chars:
        low, high = (int(x) for x in args.chars.split("-"))
        people = random_targets(store, settings, args.people or 20, low, high)
    else:
        people = default_targets(store, settings, args.people or 10)
    if len(people) < 2:
        raise SystemExit(f"no trained model in {args.folder}: run `python -m bench.quality`")
    # As many of each person's last messages as the settings read first.
    reads = max([PRIME] + [int(s.split(",")[3]) for s in args.settings if s.count(",") >= 3])
    with store.session() as session:
        workspace = load_workspace(session, settings, settings.min_chars)
        chosen = []
        for person in people:
            found = serving(session, person)
            assert found is not None
            corpus = load_corpus(session, settings, person)
            before = corpus.val_said[0].ts if corpus.val_said else None
            chosen.append((person, load_version(settings.data_dir, found.row, "cpu",
                                                found.parent), corpus,
                           recent(session, settings, person, reads, before=before)))
    vocabulary = Vocabulary.of(m.text for m in workspace.train)
    long = long_length(m.text for m in workspace.train)
    attributor = Attributor({person.label: corpus.train for person, _m, corpus, _c in chosen})
    # Variety at equal numbers: as many of each person's messages as they held out (at most
    # SAMPLES) in every column; a small person holds out a handful.
    variety = [min(SAMPLES, len(corpus.val)) or None for _p, _m, corpus, _c in chosen]
    real = [real_reading(corpus.val, vocabulary | Vocabulary.of(corpus.train), v, long)
            for (_p, _m, corpus, _c), v in zip(chosen, variety, strict=True)]
    # What the model learned from, as `mimic eval` reads it: where the held-out messages
    # differ from these, their habits moved after training (no model could follow).
    trained = [training_reading(corpus.train, vocabulary | Vocabulary.of(corpus.train), v, long)
               for (_p, _m, corpus, _c), v in zip(chosen, variety, strict=True)]
    real_fidelity = statistics.mean(attributor.accuracy(corpus.val[-SAMPLES:], person.label)
                                    or 0.0 for person, _m, corpus, _c in chosen)
    print(f"{len(chosen)} people, {SAMPLES} messages each per seed, {args.seeds} seeds; long: "
          f"over {long} characters (99 % of the workspace's messages are not)")
    header = (f"{'boost,temp,odds,prime,guard':>28} {'fidelity':>9} "
              + " ".join(f"{name[:11]:>11}" for name in SHOWN)
              + f" {'chars':>6} {'long':>6} {'stutters':>8} {'cut':>6} {'case off':>11}"
              + f" {'rows/msg':>9}"
              + f" {'seconds':>8}")
    print(header)

    def line(name: str, fidelity: float, readings: list[Reading], extra: str) -> str:
        means = [statistics.mean([getattr(r, f) for r in readings if getattr(r, f) is not None]
                                 or [math.nan]) for f in (*SHOWN, "length", "long", "stutters")]
        return (f"{name:>28} {fidelity:>9.3f} " + " ".join(f"{m:>11.3f}" for m in means[:-3])
                + f" {means[-3]:>6.0f} {means[-2]:>6.1%} {means[-1]:>8.1%}{extra}")

    print(line("real held-out messages", real_fidelity, real, ""))
    print(line("their training messages", math.nan, trained, ""))
    for setting in args.settings:
        values = [math.nan if x in ("fit", "own") else float(x) for x in setting.split(",")]
        if len(values) > 8 and not math.isnan(values[8]) and values[8] != 0:
            raise SystemExit(f"{setting}: case is 'own' or 0, not {values[8]:g}")
        values += [PRIME, 1, PLAUSIBLE, 1, math.nan, math.nan][len(values) - 3:]
        fidelity, readings, stepped, served, cut = [], [], 0, 0, 0
        off: dict[str, list[float]] = {"trained": [], "real": []}
        start = time.perf_counter()
        for seed in range(args.seeds):
            for (person, loaded, corpus, context), v, *theirs in zip(chosen, variety, trained,
                                                                     real, strict=True):
                texts, rows = draw(loaded, person.key, context, values,
                                   seed * 1_000_003 + zlib.crc32(person.key.encode()))
                stepped, served = stepped + rows, served + len(texts)
                cut += sum(len(t) >= MAX_LEN for t in texts)
                fidelity.append(attributor.accuracy(texts, person.label) or 0.0)
                readings.append(read(texts, vocabulary | Vocabulary.of(corpus.train),
                                     min(len(texts), v or 0) or None, long))
                for key, reading in zip(off, theirs, strict=True):
                    if None not in (mine := readings[-1].capitalised, reading.capitalised):
                        off[key].append(100 * abs(mine - reading.capitalised))
        mark = "  (default)" if setting == DEFAULTS else ""
        case = "/".join(f"{statistics.mean(v or [math.nan]):.1f}" for v in off.values())
        print(line(setting, statistics.mean(fidelity), readings,
                   f" {cut / max(1, served):>6.1%} {case:>11}"
                   f" {stepped / max(1, served):>9.0f}"
                   f" {time.perf_counter() - start:>8.0f}"
                   f"{mark}"), flush=True)


if __name__ == "__main__":
    main()
