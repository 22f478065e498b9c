"""`mimic eval`: how well do the served models imitate, measured on held-out data.

For each target, through the model that serves it (the shared workspace model, or a dedicated
one): held-out loss with its voice and with "anyone"'s (the gap is what its vector knows);
style fidelity (a character n-gram author classifier, trained on the people's real training
messages, asked who wrote groups of five generated messages); leak rate (verbatim ≥ 40-char
training spans before and after the novelty filter); and what a reader sees
(trainer/reading.py: real first words, capitals, real words and word pairs, variety, length);
each next to the real held-out messages (the ceiling) and a markovify baseline (the floor).

`evaluate_targets` computes a `Report` (no files); `write_report` turns it into Markdown + PNGs.
"""

from __future__ import annotations

import functools
import json
import random
import re
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from sqlalchemy import select

from mimic.core.config import Settings
from mimic.core.inert import make_inert
from mimic.core.store import Coverage, Store
from mimic.trainer.corpus import (
    BASE,
    Corpus,
    Target,
    load_corpus,
    load_workspace,
    recent,
    targets_with_data,
)
from mimic.trainer.device import pick_device
from mimic.trainer.novelty import WINDOW, NoveltyIndex
from mimic.trainer.reading import Reading, Vocabulary, long_length, read
from mimic.trainer.registry import (
    LoadedModel,
    RegistryError,
    Serving,
    active_version,
    load_served,
    serving,
    version_dir,
)
from mimic.trainer.sampler import (
    CONTEXT_MESSAGES,
    DEFAULT_TEMPERATURE,
    NoNovelText,
    Row,
    draw,
    sample_rows,
)
from mimic.trainer.shared import loss_on

TEMPERATURE = DEFAULT_TEMPERATURE  # the bot's: evaluate what people actually get
GROUP = 5  # messages per classification: one short message says little about its author
MAX_PEOPLE = 10  # the default evaluates the biggest people only: the classifier stays sharp
LOSS_CHARS = 200_000  # cap per held-out set, for both models alike (same arguments)
CLASSIFIER_MESSAGES = 5_000  # newest training messages per person the classifier sees
MARKOV_MESSAGES = 20_000  # newest training messages per target markovify learns from
PRIMING = 3  # the target's messages a reply reads first (the bot's: bot/replies.py)
SHOWN_SAMPLES = 3
SECTIONS = ("## Summary", "## Held-out loss", "## Style fidelity", "## What a reader sees",
            "## Leak rate", "## Samples", "## Loss curves", "## Method")


class EvalError(RuntimeError):
    """Nothing can be evaluated; the message says what to do."""


@dataclass
class TargetRow:
    target: Target
    version: int
    which: str  # "workspace" (the shared model) or "own" (a dedicated one)
    val_chars: int
    val_loss: float | None  # the serving model on the target's held-out messages, nats/char
    anyone_loss: float | None  # the same messages in "anyone"'s voice (what it is drawn against)
    generated: int  # messages reply() returned (after the novelty filter)
    fidelity_model: float | None = None  # share of groups attributed to the right person
    fidelity_real: float | None = None
    fidelity_markov: float | None = None
    leak_raw: float | None = None  # the raw draws: before the novelty filter
    leak_filtered: float | None = None  # reply(): after it (must be 0)
    leak_markov: float | None = None
    model: Reading | None = None  # what a reader sees, in the served messages
    real: Reading | None = None  # ... in the target's real held-out messages
    trained: Reading | None = None  # ... in its training messages (what the model learned)
    markov: Reading | None = None
    samples: list[str] = field(default_factory=list)  # inert
    markov_samples: list[str] = field(default_factory=list)  # inert
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def is_person(self) -> bool:
        return self.target.kind == "user"

    def figure(self, name: str) -> float | None:
        """A figure by name: a field, or "model.length", "real.capitalised", ..."""
        if "." not in name:
            return getattr(self, name)
        part, attr = name.split(".")
        reading = getattr(self, part)
        return None if reading is None else getattr(reading, attr)


@dataclass
class Report:
    created: datetime
    samples: int
    seed: int
    rows: list[TargetRow]
    people: list[str]  # the classifier's classes (labels); empty when fidelity was skipped
    seconds: float
    notes: list[str] = field(default_factory=list)
    context: str = "own"  # what each message read first: "own" or "conversation"

    FIGURES = ("val_loss", "anyone_loss", "fidelity_model", "fidelity_real", "fidelity_markov",
               "leak_raw", "leak_filtered", "leak_markov",
               *(f"{part}.{name}" for part in ("model", "real", "trained", "markov")
                 for name in Reading.FIELDS))

    def overall(self) -> dict[str, float | None]:
        """Means over the rows that have each figure (fidelity: people only)."""
        return {name: _mean([r.figure(name) for r in self.rows]) for name in self.FIGURES}


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _share(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def leak_rate(texts: Sequence[str], novelty: NoveltyIndex) -> float | None:
    return _share([novelty.has_copy(t, WINDOW) for t in texts])


def groups(texts: Sequence[str], size: int = GROUP) -> list[str]:
    """Consecutive messages joined in fives; a short tail is dropped unless it is all there is."""
    out = ["\n".join(texts[i : i + size]) for i in range(0, len(texts) - size + 1, size)]
    return out or (["\n".join(texts)] if texts else [])


# -- the baseline --------------------------------------------------------------------------


def markov_messages(train: Sequence[str], n: int, seed: int) -> list[str]:
    """`n` messages from a word-level Markov chain (markovify, state size 2) over `train`, or
    fewer: markovify refuses sentences too close to its input, and a corpus of a few distinct
    lines may give nothing else; then we take its unchecked output rather than nothing."""
    import markovify

    lines = [t.replace("\n", " ").strip() for t in train[-MARKOV_MESSAGES:]]
    lines = [t for t in lines if t]
    if not lines:
        return []
    state = random.getstate()  # markovify draws from the global generator: seed, then restore
    random.seed(seed)
    try:
        chain = markovify.NewlineText("\n".join(lines), state_size=2, well_formed=False)
        out: list[str] = []
        for _ in range(n):
            text = (chain.make_sentence(tries=20)
                    or chain.make_sentence(tries=5, test_output=False))
            if text:
                out.append(text)
        return out
    except (KeyError, ValueError, IndexError):  # markovify's failures on degenerate corpora
        return []
    finally:
        random.setstate(state)


# -- the author classifier -----------------------------------------------------------------


class Attributor:
    """Who wrote a group of messages: TF-IDF over character 1–4-grams inside word
    boundaries (spelling, casing, punctuation habits) + a linear SVM, balanced per person."""

    def __init__(self, training: dict[str, Sequence[str]]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.pipeline import make_pipeline
        from sklearn.svm import LinearSVC

        docs, labels = [], []
        for label, texts in training.items():
            for doc in groups(list(texts)[-CLASSIFIER_MESSAGES:]):
                docs.append(doc)
                labels.append(label)
        # No lowercasing: CAPS LOCK is exactly the kind of habit that tells people apart.
        self.pipeline = make_pipeline(
            TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True,
                            lowercase=False, min_df=2, max_features=200_000),
            LinearSVC(C=0.5, class_weight="balanced"))
        self.pipeline.fit(docs, labels)

    def accuracy(self, texts: Sequence[str], label: str) -> float | None:
        docs = groups(texts)
        if not docs:
            return None
        return _share([p == label for p in self.pipeline.predict(docs)])


# -- evaluation ----------------------------------------------------------------------------


def covered_people(store: Store, settings: Settings) -> list[tuple[Target, int]]:
    """(person, eligible characters) for everyone the active shared model has a vector for,
    or who has a dedicated model, most text first."""
    with store.session() as session:
        shared = active_version(session, BASE.key)
        sizes = dict(session.execute(select(Coverage.target, Coverage.chars).where(
            Coverage.version_id == shared.id)).all()) if shared is not None else {}
        people = [t for t in targets_with_data(session, settings, 1) if t.kind == "user"]
        own = {t.key for t in people if active_version(session, t.key) is not None}
    return sorted(((t, sizes.get(t.key, 0)) for t in people if t.key in sizes or t.key in own),
                  key=lambda pair: -pair[1])


def default_targets(store: Store, settings: Settings, limit: int = MAX_PEOPLE) -> list[Target]:
    """The `limit` people with the most eligible text that some model imitates."""
    return [t for t, _chars in covered_people(store, settings)[:limit]]


def random_targets(store: Store, settings: Settings, count: int, low: int, high: int,
                   seed: int = 0) -> list[Target]:
    """`count` people drawn at random (seeded) from those covered with `low`–`high` chars."""
    pool = [t for t, chars in covered_people(store, settings) if low <= chars <= high]
    return random.Random(seed).sample(pool, min(count, len(pool)))


def _seed_for(seed: int, target: Target) -> int:
    # crc32, not hash(): str hashes change per process, and runs must be reproducible.
    return (seed * 1_000_003 + zlib.crc32(target.key.encode())) % 2**63


def _history(folder: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads((folder / "metrics.json").read_text()).get("history", []))
    except (OSError, ValueError):
        return []


def _losses(loaded: LoadedModel, target: Target, corpus: Corpus, device: Any
            ) -> tuple[float | None, float | None]:
    """(loss in the target's voice, loss in anyone's: the shared model's anyone vector, or
    the reference a dedicated model is drawn against) on its held-out messages."""
    messages = corpus.val_said
    if sum(len(m.text) + 1 for m in messages) < 2:
        return None, None
    own = loss_on(loaded.model, loaded.vocab, loaded.slots, target.key, messages, device,
                  max_chars=LOSS_CHARS)
    anyone = loss_on(loaded.reference or loaded.model, loaded.vocab, loaded.slots, target.key,
                     messages, device, max_chars=LOSS_CHARS, anyone=True)
    return own, anyone


def _drawn(loaded: LoadedModel, rows: Sequence[Row], k: int, generator: torch.Generator,
           device: Any) -> list[str]:
    """Raw messages for the first k rows."""
    return sample_rows(loaded.model, loaded.vocab, rows[:k], reference=loaded.reference,
                       guard=loaded.guard, device=device, generator=generator)


def evaluate_targets(
    store: Store,
    settings: Settings,
    targets: Sequence[Target],
    samples: int = 100,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    context: Literal["own", "conversation"] = "own",
) -> Report:
    """Evaluate the model serving each target (see the module docstring). Each message is
    written after the target's own PRIMING last messages before the held-out ones (what
    `/mimic` reads), or with `context="conversation"`, as the answer to the CONTEXT_MESSAGES
    messages before one of their held-out messages in its channel (what a mention in a
    thread reads). Targets nothing imitates are left out with a note; if none is imitated,
    EvalError."""
    if samples < 1:
        raise EvalError(f"--samples must be at least 1, got {samples}")
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    device = pick_device(settings.device)
    notes: list[str] = []
    # Per target, what its messages read first: (context, channel said in) pairs, used in turn.
    chosen: list[tuple[Target, Serving, Corpus, list[tuple[list[tuple[str, str]], str | None]]]]
    chosen = []
    with store.session() as session:
        workspace = load_workspace(session, settings, settings.min_chars)
        for target in dict.fromkeys(targets):  # keep order, drop repeats
            if target == BASE:
                notes.append("The workspace model is evaluated through the people and "
                             "channels it imitates, not as a target: left out.")
                continue
            found = serving(session, target)
            if found is None:
                notes.append(f"{target.label} has no model that imitates it: left out.")
                continue
            corpus = load_corpus(session, settings, target)
            if context == "conversation":
                primings = [(recent(session, settings, Target(f"channel:{m.channel}", ""),
                                CONTEXT_MESSAGES, before=m.ts), m.channel)
                        for m in corpus.val_said[-samples:]]
            else:  # what the bot reads first, as it was before the held-out messages
                before = corpus.val_said[0].ts if corpus.val_said else None
                primings = [(recent(session, settings, target, PRIMING, before=before), None)]
            chosen.append((target, found, corpus, primings))
    if not chosen:
        raise EvalError("No target to evaluate has a model: train first: mimic train --all")

    # The workspace's training half: each target's held-out messages are not in it, so real
    # held-out text can score below 1 (it may use words nobody used before).
    workspace_vocabulary = Vocabulary.of(m.text for m in workspace.train)
    long = long_length(m.text for m in workspace.train)
    rows: list[TargetRow] = []
    markov: dict[str, list[str]] = {}
    generated: dict[str, list[str]] = {}
    for target, found, corpus, primings in chosen:
        say(f"evaluating {target.label}")
        try:
            loaded = load_served(settings.data_dir, found, device, target.label)
        except RegistryError as exc:
            raise EvalError(str(exc)) from None
        val_loss, anyone_loss = _losses(loaded, target, corpus, device)
        rng = _seed_for(seed, target)
        asked = [loaded.row(target.key, temperature=TEMPERATURE, context=before, where=where)
                 for before, where in primings]
        asked = [asked[i % len(asked)] for i in range(samples)]

        # The same seed for both: the raw batch is exactly the first round drawn, unfiltered.
        raw = _drawn(loaded, asked, samples, torch.Generator(device).manual_seed(rng), device)
        again = torch.Generator(device).manual_seed(rng)
        try:  # as reply() draws: refused copies and blanks are drawn again
            kept = draw(loaded.model, loaded.vocab, loaded.novelty, n=samples,
                        temperature=TEMPERATURE, sampler=functools.partial(
                            _drawn, loaded, asked, generator=again, device=device)).texts
        except NoNovelText as exc:
            kept = []
            notes.append(f"{target.label}: no novel message could be drawn ({exc}).")
        raw = [t for t in raw if t.strip()]  # reply() drops blanks too: compare like with like
        baseline = markov_messages(corpus.train, samples, rng)
        if len(baseline) < samples:
            notes.append(f"{target.label}: markovify made {len(baseline)} of {samples} "
                         "messages.")
        vocabulary = workspace_vocabulary | Vocabulary.of(corpus.train)
        # Variety at equal numbers (none drawn: the real ones' over as many as were asked).
        equal = min(len(kept) or samples, len(corpus.val)) or None
        rows.append(TargetRow(
            target=target, version=found.row.version,
            which="workspace" if found.row.target == BASE.key else "own",
            val_chars=sum(len(t) + 1 for t in corpus.val), val_loss=val_loss,
            anyone_loss=anyone_loss, generated=len(kept),
            leak_raw=leak_rate(raw, loaded.novelty), leak_filtered=leak_rate(kept,
                                                                            loaded.novelty),
            leak_markov=leak_rate(baseline, loaded.novelty),
            model=read(kept, vocabulary, equal, long),
            real=real_reading(corpus.val, vocabulary, equal, long),
            trained=training_reading(corpus.train, vocabulary, equal, long),
            markov=read(baseline, vocabulary, equal, long),
            samples=kept[:SHOWN_SAMPLES],
            markov_samples=[make_inert(t) for t in baseline[:SHOWN_SAMPLES]],
            history=_history(version_dir(settings.data_dir, found.row))))
        markov[target.key], generated[target.key] = baseline, kept

    people = [(r, c) for r, (_t, _f, c, _x) in zip(rows, chosen, strict=True) if r.is_person]
    labels: list[str] = []
    if len(people) < 2:
        notes.append("Style fidelity needs at least two people with models; skipped.")
    else:
        say("training the author classifier")
        labels = [r.target.label for r, _c in people]
        attributor = Attributor({r.target.label: c.train for r, c in people})
        for r, c in people:
            label = r.target.label
            r.fidelity_model = attributor.accuracy(generated[r.target.key], label)
            r.fidelity_real = attributor.accuracy(c.val[-samples:], label)
            r.fidelity_markov = attributor.accuracy(markov[r.target.key], label)
            if (r.fidelity_model or 0) > (r.fidelity_real or 0):
                r.notes.append("more typical than the person: the model's messages are "
                               "attributed to them more often than their own newer ones")
    return Report(datetime.now(UTC), samples, seed, rows, labels,
                  time.perf_counter() - started, notes, context)


# -- the report ----------------------------------------------------------------------------


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _md(text: str) -> str:
    """One message as one Markdown line, shown literally."""
    flat = text.replace("\n", " ⏎ ").strip()
    return re.sub(r"([\\`*_\[\]#|~])", r"\\\1", flat) or "(empty)"


def _table(head: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(cells) + " |" for cells in body), ""]


def _plot_losses(rows: Sequence[TargetRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(rows))
    lines = -(-len(rows) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(4.5 * cols, 3 * lines), dpi=100,
                             squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.set_visible(False)
    for ax, row in zip(axes.flat, rows, strict=False):
        train = [(h["seconds"], h["train_loss"]) for h in row.history if h.get("train_loss")]
        val = [(h["seconds"], h["val_loss"]) for h in row.history
               if h.get("val_loss") is not None]
        if train:
            ax.plot(*zip(*train, strict=True), label="training", alpha=0.6)
        if val:
            ax.plot(*zip(*val, strict=True), "o-", label="validation")
        if row.anyone_loss is not None:
            ax.axhline(row.anyone_loss, color="grey", ls="--", lw=1, label="as anyone")
        ax.set(title=f"{row.target.label} v{row.version}", xlabel="seconds",
               ylabel="nats/char")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_comparison(rows: Sequence[TargetRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    people = [r for r in rows if r.is_person]
    panels = [("style fidelity (right author)", people, [
                  ("model", "fidelity_model"), ("real held-out", "fidelity_real"),
                  ("markovify", "fidelity_markov")]),
              ("first word real", rows, [("model", "model.first_word_real"),
                                         ("real held-out", "real.first_word_real")]),
              ("starts with a capital", rows, [("model", "model.capitalised"),
                                               ("real held-out", "real.capitalised")]),
              ("distinct word pairs (variety)", rows, [("model", "model.distinct_2"),
                                                       ("real held-out", "real.distinct_2")])]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), dpi=100,
                             squeeze=False)
    for ax, (title, subset, series) in zip(axes.flat, panels, strict=True):
        x = np.arange(len(subset))
        width = 0.8 / len(series)
        for i, (name, figure) in enumerate(series):
            values = [r.figure(figure) or 0.0 for r in subset]
            ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
        ax.set_xticks(x, [r.target.label for r in subset], rotation=30, ha="right")
        ax.set(title=title, ylim=(0, 1.05))
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def real_reading(messages: Sequence[str], vocabulary: Vocabulary, variety: int | None,
                 long: int) -> Reading:
    """What a reader sees in a target's real messages (in time order): shares and length over
    all of them, variety over the newest `variety` (distinct-2 falls with more messages, so it
    is compared at equal numbers). Not the newest few alone for every figure: the biggest
    people's newest 100 start with a capital 4.5 points less often than their held-out
    messages as a whole (chitchat, eighteenth session)."""
    return read(messages[::-1], vocabulary, variety, long)


def training_reading(train: Sequence[str], vocabulary: Vocabulary, variety: int | None,
                     long: int) -> Reading:
    """`real_reading` of a target's training messages; their words are real by construction
    (`vocabulary` holds them): not shown."""
    return replace(real_reading(train, vocabulary, variety, long), first_word_real=None,
                   real_words=None, real_pairs=None)


def drift(report: Report) -> list[str]:
    """Sentences for the habits in which the people's held-out messages differ from their
    training messages by more than the goals allow a model's replies to differ from them (5
    points of capitalised starts, 10 % of length): what no model trained before could follow."""
    o, said = report.overall(), []
    real, trained = o["real.capitalised"], o["trained.capitalised"]
    if real is not None and trained is not None and abs(real - trained) > 0.05:
        said.append(f"The held-out messages start with a capital in {percent(real)} of cases, "
                    f"the training messages in {percent(trained)}:")
    real, trained = o["real.length"], o["trained.length"]
    if real is not None and trained and abs(real / trained - 1) > 0.10:
        said.append(f"The held-out messages run {real:.0f} characters on average, the "
                    f"training messages {trained:.0f}:")
    return [f"{sentence} replies follow the training messages (for length, the newest weigh "
            "half), so a gap this size from the held-out ones is the people's own (a habit "
            "changed after training, or too few held-out messages to tell)." for sentence in said]


# What a reader sees: (title in report.md, column in `mimic eval`'s table, figure, format).
READER = [("first word real", "1st word", "first_word_real", percent),
          ("starts with a capital", "capital", "capitalised", percent),
          ("real words", "words", "real_words", percent),
          ("real word pairs", "pairs", "real_pairs", percent),
          ("distinct word pairs", "distinct-2", "distinct_2", lambda v: number(v, 2)),
          ("characters a message", "chars", "length", lambda v: number(v, 0)),
          ("longer than 99 % of the workspace's", "long", "long", percent),
          ("a word following itself", "stutters", "stutters", percent)]


def write_report(report: Report, folder: Path) -> Path:
    """Write report.md, report.json, loss_curves.png and comparison.png into `folder`;
    returns report.md."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_figures(report, folder / "report.json")
    _plot_losses(report.rows, folder / "loss_curves.png")
    _plot_comparison(report.rows, folder / "comparison.png")
    o = report.overall()
    rows = report.rows
    md = [f"# mimic evaluation, {report.created:%Y-%m-%d %H:%M} UTC", "",
          f"{len(rows)} targets, {report.samples} generated messages each at temperature "
          f"{TEMPERATURE}, seed {report.seed}; {report.seconds:.0f} s.", "",
          "## Summary", ""]
    md += _table(["", "model", "real held-out", "training", "markovify"], [
        ["style fidelity", percent(o["fidelity_model"]), percent(o["fidelity_real"]), "—",
         percent(o["fidelity_markov"])],
        *([title, *(fmt(o[f"{part}.{name}"]) for part in ("model", "real", "trained",
                                                          "markov"))]
          for title, _c, name, fmt in READER),
        ["leak rate", f"{percent(o['leak_raw'])} raw → {percent(o['leak_filtered'])} served", "—",
         "—", percent(o["leak_markov"])],
        ["held-out loss (nats/char)", number(o["val_loss"]), "—", "—", "—"],
        ["as anyone (nats/char)", number(o["anyone_loss"]), "—", "—", "—"]])
    md += ["The real held-out column reads all of each target's held-out messages (style "
           "fidelity: the newest, as many as were drawn), the "
           "training column all of its training messages, what the models learned from (both: "
           "variety over as many of the newest as the model drew; the training messages' words "
           "are the vocabulary's own, so not counted).", ""]
    md += [f"{sentence}\n" for sentence in drift(report)]
    if (o["fidelity_model"] or 0) > (o["fidelity_real"] or 1):
        md += ["Fidelity is above the real ceiling: the messages are **more typical than the "
               "people** (a caricature as much as a likeness: compare the variety below).", ""]
    md += ["![fidelity and what a reader sees](comparison.png)", ""]
    for note in report.notes:
        md.append(f"- {note}")
    md += ["", "## Held-out loss", "",
           "Cross-entropy of each target's validation messages (its newest 10% of text), "
           "under the model that serves it, in its own voice and in anyone's (the shared "
           "model's anyone vector, or what a dedicated model is drawn against). Lower is "
           "better; the gap is what the model knows of this target.", ""]
    md += _table(["target", "model", "validation chars", "own voice", "as anyone", "gap"], [
        [r.target.label, f"{r.which} v{r.version}", f"{r.val_chars:,}", number(r.val_loss),
         number(r.anyone_loss),
         number(r.anyone_loss - r.val_loss) if None not in (r.val_loss, r.anyone_loss)
         else "—"] for r in rows])
    md += ["## Style fidelity", "",
           "Share of groups of five messages that a character n-gram classifier, trained on "
           "the real training messages of " + (", ".join(report.people) or "the people") +
           ", attributes to the right person. Chance is "
           + (f"{1 / len(report.people):.0%}." if report.people else "undefined.")
           + " Real held-out messages (the newest, as many as were drawn; the lengths "
           "beside them are of all of them) are the ceiling, markovify the baseline. Longer "
           "messages carry more evidence, so the mean lengths stand beside them.", ""]
    people = [r for r in rows if r.is_person]
    if report.people:
        md += _table(["person", "model", "real held-out", "markovify", "chars: model",
                      "chars: real", ""], [
            [r.target.label, percent(r.fidelity_model), percent(r.fidelity_real),
             percent(r.fidelity_markov), number(r.figure("model.length"), 0),
             number(r.figure("real.length"), 0), "; ".join(r.notes)] for r in people])
    else:
        md += ["Skipped: it needs at least two people with models.", ""]
    md += ["## What a reader sees", "",
           "Each figure for the served messages, then for the target's real held-out "
           "messages, then for its training messages: whether the "
           "first word is one the workspace uses, whether the first letter is a capital, the "
           "share of real words and of real pairs of consecutive words, distinct word pairs "
           "over all pairs (variety), characters a message, the share longer than 99 % of the "
           "workspace's messages, and the share where a word follows itself (\"just just\").",
           ""]
    md += _table(["target", *(title for title, _c, _n, _f in READER)], [
        [r.target.label, *(" / ".join(fmt(r.figure(f"{part}.{name}"))
                                      for part in ("model", "real", "trained"))
                           for _t, _c, name, fmt in READER)] for r in rows])
    md += ["## Leak rate", "",
           f"Share of generated messages containing a verbatim span of ≥ {WINDOW} characters "
           "of the workspace's messages (a dedicated model: of the target's own): the raw "
           "draws, what the bot serves after the novelty filter (must be 0%), and markovify.",
           ""]
    md += _table(["target", "raw", "served", "markovify", "served messages"], [
        [r.target.label, percent(r.leak_raw), percent(r.leak_filtered), percent(r.leak_markov),
         str(r.generated)] for r in rows])
    md += ["## Samples", "", "Generated, and made inert (no mention can ping anyone).", ""]
    for r in rows:
        md += [f"### {r.target.label}", "", "Model:", ""]
        md += [f"> {_md(t)}" + "  " for t in r.samples] or ["(none)"]
        md += ["", "markovify:", ""]
        md += [f"> {_md(t)}" + "  " for t in r.markov_samples] or ["(none)"]
        md.append("")
    md += ["## Loss curves", "", "From each serving version's metrics.json; the dashed line is "
           "the target's held-out loss as anyone.", "",
           "![loss curves](loss_curves.png)", "",
           "## Method", "",
           "- Generated as the bot does (after "
           + (f"the {CONTEXT_MESSAGES} channel messages before each held-out one, as the "
              "answer to them" if report.context == "conversation" else
              f"the target's {PRIMING} last messages before its held-out ones")
           + ", drawn against anyone, real "
           "words only, copies refused and drawn again, inert) at temperature "
           f"{TEMPERATURE}; raw leaks from the same rows drawn with the same seed, i.e. "
           "the first round drawn, before filtering.",
           f"- Held-out loss on at most {LOSS_CHARS:,} validation characters per target.",
           "- Words and word pairs count as real when the workspace's training messages "
           "(or the target's own) use them.",
           "- Classifier: TF-IDF of character 1–4-grams (char_wb, sublinear tf, case kept) "
           f"+ linear SVM, trained on groups of {GROUP} consecutive training messages per "
           f"person (newest {CLASSIFIER_MESSAGES:,} messages at most).",
           "- markovify: word chain of state size 2 per target on its training messages; when "
           "it cannot make a sentence unlike its input it falls back to unchecked output.",
           ""]
    path = folder / "report.md"
    path.write_text("\n".join(md), encoding="utf-8")
    return path


def _write_figures(report: Report, path: Path) -> None:
    """The report's figures unrounded, for scripts and BENCHMARKS.md (report.md rounds them):
    the means, then each target's, by the names of Report.FIGURES."""
    figures = {"created": report.created.isoformat(), "samples": report.samples,
               "seed": report.seed, "context": report.context,
               "overall": report.overall(),
               "targets": [{"target": r.target.label, "key": r.target.key, "model": r.which,
                            "version": r.version, "generated": r.generated,
                            **{name: r.figure(name) for name in Report.FIGURES}}
                           for r in report.rows]}
    path.write_text(json.dumps(figures, indent=1), encoding="utf-8")
