"""`mimic eval`: how well do the served models imitate, measured on held-out data.

For each target: held-out loss of its active model against the base alone; style fidelity (a
character n-gram author classifier, trained on the people's real training messages, asked who
wrote groups of five generated messages); leak rate (verbatim ≥ 40-char training spans before
and after the novelty filter); fluency (share of generated words the workspace really uses);
each next to the real held-out messages (the ceiling) and a markovify baseline (the floor).

`evaluate_targets` computes a `Report` (no files); `write_report` turns it into Markdown + PNGs.
"""

from __future__ import annotations

import json
import random
import re
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from mimic.core.config import Settings
from mimic.core.inert import make_inert
from mimic.core.store import Store
from mimic.trainer.corpus import BASE, Corpus, Target, load_corpus, targets_with_data
from mimic.trainer.device import pick_device
from mimic.trainer.fit import evaluate
from mimic.trainer.model import load_bundle
from mimic.trainer.novelty import WINDOW, NoveltyIndex
from mimic.trainer.registry import WEIGHTS, active_version, load_version, parent_of, version_dir
from mimic.trainer.sampler import DEFAULT_TEMPERATURE, NoNovelText, reply, sample

TEMPERATURE = DEFAULT_TEMPERATURE  # the bot's: evaluate what people actually get
GROUP = 5  # messages per classification: one short message says little about its author
MAX_PEOPLE = 10  # the default evaluates the biggest people only: the classifier stays sharp
LOSS_CHARS = 200_000  # cap per held-out set, for both models alike (same arguments)
CLASSIFIER_MESSAGES = 5_000  # newest training messages per person the classifier sees
MARKOV_MESSAGES = 20_000  # newest training messages per target markovify learns from
SHOWN_SAMPLES = 3
SECTIONS = ("## Summary", "## Held-out loss", "## Style fidelity", "## Leak rate", "## Fluency",
            "## Samples", "## Loss curves", "## Method")
_WORD = re.compile(r"\w+(?:'\w+)*")


class EvalError(RuntimeError):
    """Nothing can be evaluated; the message says what to do."""


@dataclass
class TargetRow:
    target: Target
    version: int
    val_chars: int
    val_loss: float | None  # the active model on the target's validation set, nats/char
    base_loss: float | None  # the base model alone on the same set
    generated: int  # messages reply() returned (after the novelty filter)
    fidelity_model: float | None = None  # share of groups attributed to the right person
    fidelity_real: float | None = None
    fidelity_markov: float | None = None
    leak_raw: float | None = None  # raw sample(): before the novelty filter
    leak_filtered: float | None = None  # reply(): after it (must be 0)
    leak_markov: float | None = None
    fluency_model: float | None = None  # share of words the workspace uses
    fluency_real: float | None = None
    fluency_markov: float | None = None
    # Mean characters a message: longer messages are easier to attribute, so fidelity is
    # only comparable next to these.
    length_model: float | None = None
    length_real: float | None = None
    samples: list[str] = field(default_factory=list)  # inert
    markov_samples: list[str] = field(default_factory=list)  # inert
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def is_person(self) -> bool:
        return self.target.kind == "user"


@dataclass
class Report:
    created: datetime
    samples: int
    seed: int
    rows: list[TargetRow]
    people: list[str]  # the classifier's classes (labels); empty when fidelity was skipped
    seconds: float
    notes: list[str] = field(default_factory=list)

    def overall(self) -> dict[str, float | None]:
        """Means over the rows that have each figure (fidelity: people only)."""
        names = ("val_loss", "base_loss", "fidelity_model", "fidelity_real", "fidelity_markov",
                 "leak_raw", "leak_filtered", "leak_markov", "fluency_model", "fluency_real",
                 "fluency_markov", "length_model", "length_real")
        return {name: _mean([getattr(r, name) for r in self.rows]) for name in names}


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _share(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def words(text: str) -> list[str]:
    """Lowercased words without punctuation (a mention's word joiner splits like a space)."""
    return _WORD.findall(text.lower())


def fluency(texts: Sequence[str], vocabulary: set[str]) -> float | None:
    found = [w for t in texts for w in words(t)]
    return _share([w in vocabulary for w in found])


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


def default_targets(store: Store, settings: Settings, limit: int = MAX_PEOPLE) -> list[Target]:
    """The `limit` people with the most eligible text that have an active model."""
    with store.session() as session:
        people = [t for t in targets_with_data(session, settings, 1) if t.kind == "user"]
        return [t for t in people if active_version(session, t.key) is not None][:limit]


def _seed_for(seed: int, target: Target) -> int:
    # crc32, not hash(): str hashes change per process, and runs must be reproducible.
    return (seed * 1_000_003 + zlib.crc32(target.key.encode())) % 2**63


def _history(folder: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads((folder / "metrics.json").read_text()).get("history", []))
    except (OSError, ValueError):
        return []


def evaluate_targets(
    store: Store,
    settings: Settings,
    targets: Sequence[Target],
    samples: int = 100,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Evaluate each target's active model (see the module docstring). Targets without an
    active model are left out with a note; if none has one, EvalError."""
    if samples < 1:
        raise EvalError(f"--samples must be at least 1, got {samples}")
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    device = pick_device(settings.device)
    notes: list[str] = []
    chosen: list[tuple[Target, Any, Any, Corpus]] = []
    with store.session() as session:
        base_row = active_version(session, BASE.key)
        base_corpus = load_corpus(session, settings, BASE)
        for target in dict.fromkeys(targets):  # keep order, drop repeats
            if target == BASE:
                notes.append("The base model is the reference, not a target: left out.")
                continue
            row = active_version(session, target.key)
            if row is None:
                notes.append(f"{target.label} has no active model: left out.")
                continue
            session.expunge(row)
            chosen.append((target, row, parent_of(session, row),
                           load_corpus(session, settings, target)))
    if not chosen:
        raise EvalError("No target to evaluate has an active model: train first: "
                        "mimic train --all")

    # The base's training half: each target's held-out messages are not in it, so real
    # held-out text can score below 1 (it may use words nobody used before).
    workspace_words = {w for t in base_corpus.train for w in words(t)}
    base_model = None
    if base_row is not None:
        base_model, base_vocab = load_bundle(
            version_dir(settings.data_dir, base_row) / WEIGHTS, device)

    rows: list[TargetRow] = []
    markov: dict[str, list[str]] = {}
    generated: dict[str, list[str]] = {}
    for target, row, parent, corpus in chosen:
        say(f"evaluating {target.label}")
        folder = version_dir(settings.data_dir, row)
        loaded = load_version(settings.data_dir, row, device, parent)
        model, vocab, novelty = loaded.model, loaded.vocab, loaded.novelty
        val_loss = base_loss = None
        val_chars = sum(len(t) + 1 for t in corpus.val)
        if val_chars >= 2:
            val_loss = evaluate(model, vocab.encode_corpus(corpus.val), device,
                                max_chars=LOSS_CHARS)
            if base_model is not None:
                base_loss = evaluate(base_model, base_vocab.encode_corpus(corpus.val), device,
                                     max_chars=LOSS_CHARS)
        rng = _seed_for(seed, target)
        # The same seed for both: the raw batch is exactly reply()'s first round, unfiltered.
        raw = sample(model, vocab, n=samples, reference=loaded.reference,
                     temperature=TEMPERATURE, device=device,
                     generator=torch.Generator(device).manual_seed(rng))
        try:
            kept = reply(loaded, n=samples, temperature=TEMPERATURE, device=device,
                         generator=torch.Generator(device).manual_seed(rng)).texts
        except NoNovelText as exc:
            kept = []
            notes.append(f"{target.label}: no novel message could be drawn ({exc}).")
        raw = [t for t in raw if t.strip()]  # reply() drops blanks too: compare like with like
        baseline = markov_messages(corpus.train, samples, rng)
        if len(baseline) < samples:
            notes.append(f"{target.label}: markovify made {len(baseline)} of {samples} "
                         "messages.")
        vocabulary = workspace_words | {w for t in corpus.train for w in words(t)}
        real = corpus.val[-samples:]  # the newest held-out messages, as many as generated
        rows.append(TargetRow(
            target=target, version=row.version, val_chars=val_chars, val_loss=val_loss,
            base_loss=base_loss, generated=len(kept),
            leak_raw=leak_rate(raw, novelty), leak_filtered=leak_rate(kept, novelty),
            leak_markov=leak_rate(baseline, novelty),
            fluency_model=fluency(kept, vocabulary), fluency_real=fluency(real, vocabulary),
            fluency_markov=fluency(baseline, vocabulary),
            length_model=_mean([len(t) for t in kept]), length_real=_mean([len(t) for t in real]),
            samples=kept[:SHOWN_SAMPLES],
            markov_samples=[make_inert(t) for t in baseline[:SHOWN_SAMPLES]],
            history=_history(folder)))
        markov[target.key], generated[target.key] = baseline, kept

    people = [(r, c) for r, (_t, _row, _parent, c) in zip(rows, chosen, strict=True) if r.is_person]
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
    return Report(datetime.now(UTC), samples, seed, rows, labels,
                  time.perf_counter() - started, notes)


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
        if row.base_loss is not None:
            ax.axhline(row.base_loss, color="grey", ls="--", lw=1, label="base alone")
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

    panels = [("style fidelity (right author)", "fidelity", [r for r in rows if r.is_person]),
              ("fluency (known words)", "fluency", list(rows)),
              ("leak rate (≥40-char copies)", "leak", list(rows))]
    panels = [p for p in panels if p[2]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), dpi=100,
                             squeeze=False)
    for ax, (title, kind, subset) in zip(axes.flat, panels, strict=True):
        series = {
            "fidelity": [("model", "fidelity_model"), ("real held-out", "fidelity_real"),
                         ("markovify", "fidelity_markov")],
            "fluency": [("model", "fluency_model"), ("real held-out", "fluency_real"),
                        ("markovify", "fluency_markov")],
            "leak": [("model, raw", "leak_raw"), ("model, filtered", "leak_filtered"),
                     ("markovify", "leak_markov")],
        }[kind]
        x = np.arange(len(subset))
        width = 0.8 / len(series)
        for i, (name, attr) in enumerate(series):
            values = [getattr(r, attr) or 0.0 for r in subset]
            ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
        ax.set_xticks(x, [r.target.label for r in subset], rotation=30, ha="right")
        # Leaks are a few percent at most: on a 0..1 axis they would not show.
        top = 1.05 if kind != "leak" else max(0.05, 1.2 * max(
            (getattr(r, a) or 0.0 for r in subset for _n, a in series), default=0.0))
        ax.set(title=title, ylim=(0, top))
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report: Report, folder: Path) -> Path:
    """Write report.md, loss_curves.png and comparison.png into `folder`; returns report.md."""
    folder.mkdir(parents=True, exist_ok=True)
    _plot_losses(report.rows, folder / "loss_curves.png")
    _plot_comparison(report.rows, folder / "comparison.png")
    o = report.overall()
    rows = report.rows
    md = [f"# mimic evaluation, {report.created:%Y-%m-%d %H:%M} UTC", "",
          f"{len(rows)} targets, {report.samples} generated messages each at temperature "
          f"{TEMPERATURE}, seed {report.seed}; {report.seconds:.0f} s.", "",
          "## Summary", ""]
    md += _table(["", "model", "real held-out", "markovify"], [
        ["style fidelity", percent(o["fidelity_model"]), percent(o["fidelity_real"]),
         percent(o["fidelity_markov"])],
        ["fluency", percent(o["fluency_model"]), percent(o["fluency_real"]),
         percent(o["fluency_markov"])],
        ["leak rate", f"{percent(o['leak_raw'])} raw → {percent(o['leak_filtered'])} served", "—",
         percent(o["leak_markov"])],
        ["characters a message", number(o["length_model"], 0), number(o["length_real"], 0), "—"],
        ["held-out loss (nats/char)", number(o["val_loss"]), "—", "—"],
        ["base alone (nats/char)", number(o["base_loss"]), "—", "—"]])
    md += ["![fidelity, fluency and leaks](comparison.png)", ""]
    for note in report.notes:
        md.append(f"- {note}")
    md += ["", "## Held-out loss", "",
           "Cross-entropy of each target's validation messages (its newest 10% of text), "
           "under its active model and under the workspace base model alone. Lower is better; "
           "the gap is what fine-tuning on the target bought.", ""]
    md += _table(["target", "version", "validation chars", "model", "base alone", "gain"], [
        [r.target.label, f"v{r.version}", f"{r.val_chars:,}", number(r.val_loss),
         number(r.base_loss),
         number(r.base_loss - r.val_loss) if None not in (r.val_loss, r.base_loss) else "—"]
        for r in rows])
    md += ["## Style fidelity", "",
           "Share of groups of five messages that a character n-gram classifier, trained on "
           "the real training messages of " + (", ".join(report.people) or "the people") +
           ", attributes to the right person. Chance is "
           + (f"{1 / len(report.people):.0%}." if report.people else "undefined.")
           + " Real held-out messages are the ceiling, markovify the baseline. Longer "
           "messages carry more evidence, so the mean lengths stand beside them.", ""]
    people = [r for r in rows if r.is_person]
    if report.people:
        md += _table(["person", "model", "real held-out", "markovify", "chars: model",
                      "chars: real"], [
            [r.target.label, percent(r.fidelity_model), percent(r.fidelity_real),
             percent(r.fidelity_markov), number(r.length_model, 0), number(r.length_real, 0)]
            for r in people])
    else:
        md += ["Skipped: it needs at least two people with models.", ""]
    md += ["## Leak rate", "",
           f"Share of generated messages containing a verbatim span of ≥ {WINDOW} characters "
           "of the target's own messages: the model's raw samples, what the bot serves after "
           "the novelty filter (must be 0%), and markovify.", ""]
    md += _table(["target", "raw", "served", "markovify", "served messages"], [
        [r.target.label, percent(r.leak_raw), percent(r.leak_filtered), percent(r.leak_markov),
         str(r.generated)] for r in rows])
    md += ["## Fluency", "",
           "Share of words (lowercased, punctuation stripped) that the workspace uses: the "
           "base model's training messages plus the target's own.", ""]
    md += _table(["target", "model", "real held-out", "markovify"], [
        [r.target.label, percent(r.fluency_model), percent(r.fluency_real),
         percent(r.fluency_markov)] for r in rows])
    md += ["## Samples", "", "Generated, and made inert (no mention can ping anyone).", ""]
    for r in rows:
        md += [f"### {r.target.label}", "", "Model:", ""]
        md += [f"> {_md(t)}" + "  " for t in r.samples] or ["(none)"]
        md += ["", "markovify:", ""]
        md += [f"> {_md(t)}" + "  " for t in r.markov_samples] or ["(none)"]
        md.append("")
    md += ["## Loss curves", "", "From each active version's metrics.json; the dashed line is "
           "the base model alone on the same validation set.", "",
           "![loss curves](loss_curves.png)", "",
           "## Method", "",
           "- Generated with reply() (the bot's path: drawn against the base model, copies "
           "refused and drawn again, inert) at temperature "
           f"{TEMPERATURE}; raw leaks from sample() with the same seed, i.e. reply()'s first "
           "round before filtering.",
           f"- Held-out loss on at most {LOSS_CHARS:,} validation characters per target.",
           "- Classifier: TF-IDF of character 1–4-grams (char_wb, sublinear tf, case kept) "
           f"+ linear SVM, trained on groups of {GROUP} consecutive training messages per "
           f"person (newest {CLASSIFIER_MESSAGES:,} messages at most).",
           "- markovify: word chain of state size 2 per target on its training messages; when "
           "it cannot make a sentence unlike its input it falls back to unchecked output.",
           ""]
    path = folder / "report.md"
    path.write_text("\n".join(md), encoding="utf-8")
    return path
