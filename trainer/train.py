"""Training jobs: the shared workspace model (one char-LSTM for everyone, conditioned on who
writes and where), dedicated fine-tunes of it for one person or channel, and
`retrain_changed`, the one function the nightly scheduler and the admin `retrain` command call.

A version folder holds: model.pt (weights + config + vocabulary + the ids that have vectors,
loaded with weights_only=True), config.json, metrics.json, loss.png, novelty.npy (the index the
sampler uses to refuse verbatim copies: of every public message for the shared model, of the
target's own for a dedicated one) and, for the shared model, the workspace's lexicon (the
words drawing may use), wording.npz (how often each covered person and channel used each
word, and how many of their messages start with a capital: the words their replies prefer and
how they begin, trainer/wording.py) and lengths.json (where its replies
are drawn to an end, the factor on the end mark's odds fitted to its people's message
lengths, and the lower boost of those whose wording narrowed at the full one:
trainer/lengths.py).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import select, update

from mimic.core.config import Settings
from mimic.core.store import Coverage, ModelVersion, Store, User
from mimic.trainer.corpus import (
    BASE,
    Said,
    Target,
    Workspace,
    load_corpus,
    load_workspace,
    may_have_model,
    targets_with_data,
)
from mimic.trainer.device import pick_device
from mimic.trainer.distributed import fit_parallel
from mimic.trainer.fit import FitResult, Stream, TrainConfig, evaluate, throughput
from mimic.trainer.lengths import OTHERS, PEOPLE, Fit, fit_workspace, own_long, spread
from mimic.trainer.lexicon import Lexicon, WordGuard
from mimic.trainer.model import (
    CharLSTM,
    ModelConfig,
    Slots,
    flops_per_char,
    load_model,
    param_count,
    save_checkpoint,
    size_for,
)
from mimic.trainer.novelty import NoveltyIndex
from mimic.trainer.reading import long_length
from mimic.trainer.registry import (
    LENGTHS,
    LEXICON,
    NOVELTY,
    WEIGHTS,
    WORDING,
    Lengths,
    LoadedModel,
    NotAllowed,
    active_version,
    load_lengths,
    publish,
    save_lengths,
    version_dir,
)
from mimic.trainer.sampler import LONG_QUANTILE
from mimic.trainer.shared import (
    carry_over,
    encode,
    loss_on,
    score,
    slots_of,
    target_stream,
    validation_sample,
)
from mimic.trainer.vocab import Vocab
from mimic.trainer.wording import Wording

# How the shared model is conditioned (bench/conditioning.py compares the choices).
CONDITIONING = {"context_dim": 32, "rank": 16, "habits": 8}
VALIDATIONS = 40  # per run of the shared model (fewer for short ones: every 15 s at most)
# Fine-tuning starts from a trained net: a gentler peak rate than from scratch, short warmup.
FINE_TUNE = {"lr": 1e-3, "warmup_steps": 10, "anyone_share": 0.0}
# The nightly warm start moves a model everyone is served by, over one pass of a day's
# messages: at FINE_TUNE's rate it ended 0.004 nats/char worse on validation and was never
# promoted (bench.nightly); a third of it keeps what the model knew.
NIGHTLY_LR = 3e-4
# The nightly warm start: the new messages (after WARMUP_CHARS of their channel before them,
# for context) and REPLAY times as many characters of older ones, so nothing is forgotten.
REPLAY, WARMUP_CHARS, REPLAY_SPAN = 4, 2_000, 4_000
# A net must see this many characters per parameter within its time budget, or a smaller one
# ends lower in the same minutes. 5 keeps the measured case (2 x 256 on a 1.1M-char
# person, 2 minutes on 2 CPU cores at ~36k chars/s: 1.48 nats/char) and stops the data-sized
# 3 x 512 from being picked for a 10-minute CPU budget, where it would see < 1 char/param.
CHARS_PER_PARAM = 5
log = logging.getLogger(__name__)


class TrainError(RuntimeError):
    """A target cannot be trained; the message says why and what to do."""


@dataclass
class Outcome:
    target: Target
    # active | kept | failed | skipped (failed: see `note` when version is None) | retired (a
    # newer version, trained at the same time, was promoted first)
    status: str
    version: int | None = None
    val_before: float | None = None  # the previous active model on the same validation set
    val_after: float | None = None
    note: str = ""

    def describe(self) -> str:
        if self.status == "skipped":
            return f"{self.target.label}: {self.note}"
        if self.version is None:
            return f"{self.target.label}: {self.note}; its active model is unchanged"
        before = f"{self.val_before:.3f}" if self.val_before is not None else "—"
        after = f"{self.val_after:.3f}" if self.val_after is not None else "—"
        verdict = {"active": "promoted", "kept": "kept the previous model (new one worse)",
                   "failed": "failed to load, not promoted",
                   "retired": "not promoted: a newer version trained meanwhile is active"
                   }[self.status]
        return (f"{self.target.label}: v{self.version} {verdict}; "
                f"validation loss {before} → {after} nats/char")


def _progress_bar(console: Console | None) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    TextColumn("step {task.fields[step]} · loss {task.fields[loss]} · "
                               "{task.fields[speed]} chars/s"),
                    console=console, disable=console is None, transient=True)


def _plot(history: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    train = [(h["seconds"], h["train_loss"]) for h in history if h.get("train_loss")]
    val = [(h["seconds"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if train:
        ax.plot(*zip(*train, strict=True), label="training", alpha=0.7)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation")
    ax.set(xlabel="seconds", ylabel="loss (nats/char)", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _write_version(folder: Path, model: CharLSTM, vocab: Vocab, slots: Slots | None,
                   label: str, result: FitResult, train_cfg: TrainConfig,
                   novelty: NoveltyIndex,
                   words: tuple[Lexicon, Wording, Lengths, Fit | None] | None,
                   meta: dict[str, Any]) -> None:
    save_checkpoint(model, model.config, folder / WEIGHTS, vocab, slots)
    (folder / "config.json").write_text(json.dumps({
        "label": label, "model": asdict(model.config), "train": asdict(train_cfg),
        "vocab": vocab.to_json(), **meta}, indent=2, ensure_ascii=False))
    (folder / "metrics.json").write_text(json.dumps({
        "best_val_loss": result.best_val_loss, "steps": result.steps,
        "chars_trained": result.chars_trained, "stopped": result.stopped_reason,
        "precision": result.precision, "history": result.history}, indent=2))
    novelty.save(folder / NOVELTY)
    if words is not None:  # the shared model's: the workspace's words and lengths
        lexicon, wording, lengths, fit = words
        lexicon.save(folder / LEXICON)
        wording.save(folder / WORDING)
        save_lengths(folder / LENGTHS, lengths, None if fit is None else fit.record())
    _plot(result.history, label, folder / "loss.png")


def _verify(folder: Path) -> None:
    load_model(folder / WEIGHTS)
    NoveltyIndex.load(folder / NOVELTY)
    if (folder / LEXICON).exists():
        Lexicon.load(folder / LEXICON)
    if (folder / WORDING).exists():
        Wording.load(folder / WORDING)
    if (folder / LENGTHS).exists():
        load_lengths(folder / LENGTHS)


def _show_progress(console: Console | None, label: str, cfg: TrainConfig
                   ) -> tuple[Progress, Callable[[dict[str, Any]], None]]:
    bar = _progress_bar(console)
    task = bar.add_task(f"training {label}", total=cfg.max_seconds or None, step=0, loss="…",
                        speed="…")

    # Where the output is not a terminal (a cron job's log), the bar shows nothing: a plain
    # line at each validation says how far a run has come instead.
    lines = console is not None and not console.is_terminal
    budget = f" of {cfg.max_seconds:,.0f}" if cfg.max_seconds else ""

    def show(row: dict[str, Any]) -> None:
        loss = row["val_loss"] or row["train_loss"]
        bar.update(task, completed=row["seconds"], step=row["step"],
                   loss=f"{loss:.3f}" if loss else "…", speed=f"{row['chars_per_s']:,.0f}")
        if lines and row["val_loss"] is not None:
            assert console is not None
            console.print(f"training {label}: {row['seconds']:,.0f}{budget} s, step "
                          f"{row['step']:,}, validation loss {row['val_loss']:.3f}, "
                          f"{row['chars_per_s']:,.0f} chars/s", markup=False, highlight=False)

    return bar, show


def train(
    store: Store,
    settings: Settings,
    target: Target,
    *,
    minutes: float | None = None,
    console: Console | None = None,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    fresh: bool = False,
) -> Outcome:
    """Train and publish one model: the shared one (BASE) or a dedicated one for a person or
    channel. A new version is promoted only if it is no worse on the current validation set
    than the active one."""
    if target == BASE:
        return train_shared(store, settings, minutes=minutes, console=console,
                            model_overrides=model_overrides, train_overrides=train_overrides,
                            fresh=fresh)
    return train_dedicated(store, settings, target, minutes=minutes, console=console,
                           train_overrides=train_overrides)


# -- the shared model ------------------------------------------------------------------------


@dataclass
class _WarmStart:
    model: CharLSTM
    vocab: Vocab
    slots: Slots


def _warm_start(session: Any, settings: Settings, previous: ModelVersion | None,
                workspace: Workspace) -> _WarmStart | None:
    """The active shared model to continue from, or None for a fresh start: there is none,
    it is not conditioned (an older mimic's), or someone it covered has since opted out
    (their text must leave the weights, not only their vector)."""
    if previous is None:
        return None
    try:
        model, vocab, slots = load_model(version_dir(settings.data_dir, previous) / WEIGHTS)
    except Exception:  # noqa: BLE001 - a broken model is no place to start from
        log.warning("the active shared model does not load: training from scratch")
        return None
    if not model.config.conditioned or vocab is None:
        return None
    gone = set(slots.people) - set(workspace.people)
    if gone and session.scalars(select(User.id).where(User.id.in_(gone),
                                                      User.opted_out)).first():
        return None
    return _WarmStart(model, vocab, slots)


def _incremental(workspace: Workspace, watermark: str | None, seed: int = 0) -> list[Said]:
    """What a warm start trains on: each channel's messages newer than `watermark`, after
    WARMUP_CHARS of what came before them, plus REPLAY times as many characters of older
    messages in spans of REPLAY_SPAN (so that the model does not forget the rest)."""
    by_channel: dict[str, list[Said]] = {}
    for m in workspace.train:
        by_channel.setdefault(m.channel, []).append(m)
    picked: list[Said] = []
    old_spans: list[list[Said]] = []
    new_chars = 0
    for messages in by_channel.values():
        first_new = next((i for i, m in enumerate(messages)
                          if watermark is None or float(m.ts) > float(watermark)), len(messages))
        start, chars = first_new, 0
        while start > 0 and chars < WARMUP_CHARS:
            start -= 1
            chars += len(messages[start].text) + 1
        picked += messages[start:]
        new_chars += sum(len(m.text) + 1 for m in messages[first_new:])
        span: list[Said] = []
        span_chars = 0
        for m in messages[:start]:
            span.append(m)
            span_chars += len(m.text) + 1
            if span_chars >= REPLAY_SPAN:
                old_spans.append(span)
                span, span_chars = [], 0
    random.Random(seed).shuffle(old_spans)
    replayed = 0
    for span in old_spans:
        if replayed >= REPLAY * new_chars:
            break
        picked += span
        replayed += sum(len(m.text) + 1 for m in span)
    return picked


def _loss_of_shared(settings: Settings, version: ModelVersion | None, messages: list[Said],
                    device: Any) -> float | None:
    """The active shared model's loss on `messages` (conditioned with its own vectors, or
    none for an older unconditioned base); inf if it no longer loads, so a working one wins."""
    if version is None:
        return None
    try:
        model, vocab, slots = load_model(version_dir(settings.data_dir, version) / WEIGHTS,
                                         device)
        assert vocab is not None
        stream = (encode(vocab, slots, messages) if model.config.conditioned
                  else Stream(vocab.encode_corpus(m.text for m in messages)))
        return evaluate(model, stream, device)
    except Exception:  # noqa: BLE001 - any failure to score means it cannot be kept
        return float("inf")


def train_shared(
    store: Store,
    settings: Settings,
    *,
    minutes: float | None = None,
    console: Console | None = None,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    fresh: bool = False,
) -> Outcome:
    """Train the shared model on every public channel: from scratch, or (nightly) warm-started
    from the active one on what is new plus a replay of the rest. Everyone with at least
    MIMIC_MIN_CHARS gets a vector of their own; the version's coverage rows say how well each
    is imitated."""
    device = pick_device(settings.device)
    with store.session() as session:
        workspace = load_workspace(session, settings, settings.min_chars)
        previous = active_version(session, BASE.key)
        warm = None if fresh else _warm_start(session, settings, previous, workspace)
        if previous is not None:
            session.expunge(previous)
    if not workspace.chars or not workspace.val:
        raise TrainError("Nobody has written enough to learn from yet: a person or public "
                         f"channel needs at least {settings.min_chars:,} characters of messages "
                         "mimic may use (MIMIC_MIN_CHARS). Import or export first.")
    slots = slots_of(workspace)
    budget = TrainConfig(max_seconds=60 * (minutes or settings.base_minutes),
                         precision=settings.precision)
    if warm is not None:
        model, vocab = carry_over(warm.model, warm.slots, slots), warm.vocab
        messages = _incremental(workspace, previous.data_watermark if previous else None)
        cfg = replace(budget, **{**FINE_TUNE, "lr": NIGHTLY_LR,
                                 "anyone_share": budget.anyone_share,
                                 **(train_overrides or {})})
        # One pass over what is new and its replay, unless the budget ends first.
        passes = max(1, sum(len(m.text) + 1 for m in messages) // (cfg.batch_size
                                                                    * cfg.seq_len))
        cfg = replace(cfg, max_steps=cfg.max_steps or passes)
    else:
        vocab = Vocab.build(m.text for m in workspace.train)
        messages = workspace.train
        cfg = replace(budget, **(train_overrides or {}))
        model = CharLSTM(affordable_size(
            workspace.train_chars, len(vocab), cfg, device, people=len(slots.people) + 1,
            channels=len(slots.channels) + 1, **{**CONDITIONING, **(model_overrides or {})}))
    # About VALIDATIONS checks per run: every 15 s, a long run spent a fifth of its time
    # validating.
    if cfg.eval_every_s:
        cfg = replace(cfg, eval_every_s=max(cfg.eval_every_s, cfg.max_seconds / VALIDATIONS))
    held = validation_sample(workspace, 2 * cfg.val_max_chars)

    started = time.perf_counter()
    bar, show = _show_progress(console, "the shared model", cfg)
    with bar:
        result = fit_parallel(model, encode(vocab, slots, messages),
                              encode(vocab, slots, held), cfg, device, on_progress=show,
                              nproc=settings.nproc)
    new_loss = evaluate(model, encode(vocab, slots, held), device)
    old_loss = _loss_of_shared(settings, previous, held, device)
    scores = score(model, vocab, slots, workspace, list(workspace.chars), device)
    every = list(dict.fromkeys([*(m.text for m in workspace.train),
                                *(m.text for v in workspace.val.values() for m in v)]))
    novelty, lexicon = NoveltyIndex.build(every), Lexicon.build(every)
    wording = Wording.build(((m.user, m.channel, m.text) for m in workspace.train),
                            set(workspace.chars))
    guard = WordGuard(lexicon, vocab, wording)
    lengths, fit = _fit_lengths(model.cpu(), vocab, slots, novelty, guard, workspace, every)
    seconds = time.perf_counter() - started
    coverage = [{"target": key, "slot": (slots.person if key.startswith("user:")
                                         else slots.channel)(key.split(":", 1)[1]),
                 "chars": workspace.chars[key], "val_chars": chars, "val_loss": own,
                 "val_loss_anyone": anyone} for key, (chars, own, anyone) in scores.items()]
    version = publish(
        store, settings.data_dir, BASE,
        write=lambda folder: _write_version(
            folder, model, vocab, slots, BASE.label, result, cfg, novelty,
            (lexicon, wording, lengths, fit),
            {"device": str(device), "warm_start": warm is not None,
             "people": len(slots.people), "channels": len(slots.channels)}),
        verify=_verify,
        row={"parent_id": previous.id if warm is not None and previous else None,
             "data_watermark": workspace.watermark, "data_digest": workspace.digest,
             "chars_trained": result.chars_trained, "val_loss": new_loss,
             "device": str(device), "seconds": seconds},
        promote=old_loss is None or new_loss <= old_loss,
        coverage=coverage,
    )
    how = "warm start" if warm is not None else "from scratch"
    return Outcome(BASE, version.status, version.version, old_loss, new_loss,
                   note=f"{how}, {len(slots.people)} people and {len(slots.channels)} "
                        "channels covered; " + ("" if fit is None else f"{fit.describe()}; ")
                        + f"stopped: {result.stopped_reason}")


def _fit_lengths(model: CharLSTM, vocab: Vocab, slots: Slots, novelty: NoveltyIndex,
                 guard: WordGuard, workspace: Workspace, every: Sequence[str]
                 ) -> tuple[Lengths, Fit | None]:
    """Where the new model's replies are drawn to an end: past the length LONG_QUANTILE of the
    workspace's messages stay within (the PEOPLE biggest senders': of their own, `own_long`),
    at the end odds fitted to its people's message lengths (trained ones; END_ODDS where
    nobody has a vector of their own): the PEOPLE biggest senders each at their own, everyone
    else at those of OTHERS people spread over the rest (`fit_workspace`)."""
    long = long_length(every, LONG_QUANTILE)
    biggest, others = workspace.people[:PEOPLE], spread(workspace.people[PEOPLE:], OTHERS)
    texts: dict[str, list[str]] = {user: [] for user in [*biggest, *others]}
    for m in sorted(workspace.train, key=lambda m: m.ts):  # each person's oldest first
        if m.user in texts:
            texts[m.user].append(m.text)
    people = [(user, texts[user]) for user in biggest if texts[user]]
    if not people:
        return Lengths(long), None
    longs = own_long(people)
    candidate = LoadedModel(0, 0, model, vocab, novelty, slots=slots,
                            guard=guard, long_message=long, own_long=longs)
    fit = fit_workspace(candidate, people, [(user, texts[user]) for user in others
                                            if texts[user]])
    return Lengths(long, fit.end_odds, fit.own_odds, longs, fit.own_boost), fit


# -- dedicated models -------------------------------------------------------------------------


def train_dedicated(
    store: Store,
    settings: Settings,
    target: Target,
    *,
    minutes: float | None = None,
    console: Console | None = None,
    train_overrides: dict[str, Any] | None = None,
) -> Outcome:
    """Fine-tune a copy of the shared model on one person's or channel's text alone, starting
    from their vector (a private channel, which the shared model never reads, from "anyone")."""
    device = pick_device(settings.device)
    with store.session() as session:
        corpus = load_corpus(session, settings, target)
        shared = active_version(session, BASE.key)
        previous = active_version(session, target.key)
        for row in (shared, previous):
            if row is not None:
                session.expunge(row)
    if shared is None:
        raise TrainError("There is no shared workspace model yet: run `mimic train --base` "
                         "first (or `mimic train --all`, which does it).")
    if corpus.chars < settings.min_chars or not corpus.val_said:
        raise TrainError(f"{target.label} has {corpus.chars:,} characters of messages mimic "
                         f"may learn from; a model needs at least {settings.min_chars:,} "
                         "(MIMIC_MIN_CHARS).")
    model, vocab, slots = load_model(version_dir(settings.data_dir, shared) / WEIGHTS)
    if vocab is None or not model.config.conditioned:
        raise TrainError("The shared model was made by an older mimic: retrain it first "
                         "(`mimic train --base --fresh`).")
    cfg = replace(TrainConfig(max_seconds=60 * (minutes or settings.target_minutes),
                              precision=settings.precision, **FINE_TUNE),
                  **(train_overrides or {}))

    def stream(messages: list[Said]) -> Stream:
        return target_stream(vocab, slots, target.key, messages)

    started = time.perf_counter()
    bar, show = _show_progress(console, target.label, cfg)
    with bar:
        result = fit_parallel(model, stream(corpus.train_said), stream(corpus.val_said), cfg,
                              device, on_progress=show, nproc=settings.nproc)
    seconds = time.perf_counter() - started
    new_loss = evaluate(model, stream(corpus.val_said), device)
    old_loss = (None if previous is None else
                _losses_of(settings, previous, target, corpus.val_said, device)[0])
    shared_loss = _rescore(store, settings, shared, target, corpus.val_said, device)
    try:
        version = publish(
            store, settings.data_dir, target,
            write=lambda folder: _write_version(
                folder, model.cpu(), vocab, slots, target.label, result, cfg,
                NoveltyIndex.build(corpus.train + corpus.val), None, {"device": str(device)}),
            verify=_verify,
            row={"parent_id": shared.id, "data_watermark": corpus.watermark,
                 "data_digest": corpus.digest, "chars_trained": result.chars_trained,
                 "val_loss": new_loss, "device": str(device), "seconds": seconds},
            promote=old_loss is None or new_loss <= old_loss,
            allowed=lambda session: may_have_model(session, settings, target),
        )
    except NotAllowed as exc:
        raise TrainError(str(exc)) from None
    return Outcome(target, version.status, version.version, old_loss, new_loss,
                   note=f"the shared model scores {shared_loss:.3f}; stopped: "
                        f"{result.stopped_reason}")


def _losses_of(settings: Settings, version: ModelVersion, target: Target,
               messages: list[Said], device: Any, anyone: Sequence[bool] = (False,)
               ) -> list[float]:
    """A version's losses on a target's messages, in the target's voice (False) and/or in
    anyone's (True); inf if it does not load (or cannot read them), so a working one
    replaces it."""
    try:
        model, vocab, slots = load_model(version_dir(settings.data_dir, version) / WEIGHTS,
                                         device)
        assert vocab is not None
        return [loss_on(model, vocab, slots, target.key, messages, device, anyone=a)
                for a in anyone]
    except Exception:  # noqa: BLE001 - any failure to score means it cannot be kept
        return [float("inf")] * len(anyone)


def _rescore(store: Store, settings: Settings, shared: ModelVersion, target: Target,
             messages: list[Said], device: Any) -> float:
    """The shared model's loss on all of the target's held-out `messages`, written into its
    coverage row (with anyone's): `serving` compares that row with a dedicated model's loss,
    and the shared model's publication scored only SCORE_CHARS characters of each target, a
    noisy sample for the people big enough to get a dedicated model. inf if it cannot score."""
    own, anyone = _losses_of(settings, shared, target, messages, device, (False, True))
    if own == float("inf"):
        return own
    # No row for a private channel (the shared model skips them), nor for someone who opted
    # out meanwhile (their row is gone): then nothing is written.
    with store.session() as session:
        session.execute(update(Coverage).where(Coverage.version_id == shared.id,
                                               Coverage.target == target.key)
                        .values(val_loss=own, val_loss_anyone=anyone,
                                val_chars=sum(len(m.text) + 1 for m in messages)))
    return own


# -- sizing, and what to retrain ----------------------------------------------------------------


def affordable_size(train_chars: int, vocab_size: int, cfg: TrainConfig, device: Any,
                    **overrides: Any) -> ModelConfig:
    """The data's size (`size_for`), shrunk until the time budget can show it CHARS_PER_PARAM
    characters per parameter at the speed measured on this device. A size fixed by the
    caller, or a budget in steps, is taken as it is."""
    config = size_for(train_chars, vocab_size, **overrides)
    if cfg.max_seconds <= 0 or {"hidden_size", "num_layers"} & overrides.keys():
        return config
    measured: tuple[ModelConfig, float] | None = None  # the last size probed, its chars/s
    while True:
        if measured is not None:  # skip sizes that cannot fit even at the FLOP-scaled speed
            speed = measured[1] * flops_per_char(measured[0]) / flops_per_char(config)
        if measured is None or param_count(config) <= speed * cfg.max_seconds / CHARS_PER_PARAM:
            speed = throughput(CharLSTM(config), cfg, device)
            measured = (config, speed)
            if param_count(config) <= speed * cfg.max_seconds / CHARS_PER_PARAM:
                return config
        smaller = size_for(train_chars, vocab_size, param_count(config) - 1, **overrides)
        if smaller == config:  # already the smallest size
            return config
        config = smaller


def needs_training(store: Store, settings: Settings, target: Target) -> bool:
    """True when the target has no active model, or its data changed since that model (for a
    dedicated model: or a newer shared model came since)."""
    with store.session() as session:
        active = active_version(session, target.key)
        if active is None:
            return True
        if target == BASE:
            return load_workspace(session, settings, settings.min_chars).digest != \
                active.data_digest
        shared = active_version(session, BASE.key)
        if shared is not None and active.parent_id != shared.id:
            return True
        return load_corpus(session, settings, target).digest != active.data_digest


def dedicated_targets(store: Store, settings: Settings) -> list[Target]:
    """What gets a dedicated model in a full run: every private channel with enough text (the
    shared model never reads them) and the MIMIC_DEDICATED people with the most text."""
    with store.session() as session:
        every = targets_with_data(session, settings, settings.min_chars)
    people = [t for t in every if t.kind == "user"][: settings.dedicated]
    return [t for t in every if t.kind == "channel" and t.private] + people


def retrain_changed(
    store: Store,
    settings: Settings,
    *,
    targets: list[Target] | None = None,
    force: bool = False,
    console: Console | None = None,
    report: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Retrain the shared model when its data changed, then the dedicated models whose data
    (or shared model) changed.

    `targets` limits the dedicated ones (default: `dedicated_targets`); `force` retrains them
    even when unchanged (the shared model only when its data changed). A target that cannot
    be trained is reported as skipped, not fatal.
    """
    outcomes: list[Outcome] = []

    def run(target: Target, force: bool) -> None:
        # Each target fails alone: a locked database or a full disk while training one still
        # leaves the others their turn, and the summary says what really happened.
        try:
            if not force and not needs_training(store, settings, target):
                outcome = Outcome(target, "skipped", note="unchanged since its model was made")
            else:
                outcome = train(store, settings, target, console=console)
        except TrainError as exc:
            outcome = Outcome(target, "skipped", note=str(exc))
        except Exception as exc:  # noqa: BLE001 - reported, logged, and the run goes on
            log.exception("training %s failed", target.label)
            outcome = Outcome(target, "failed", note=f"training failed ({type(exc).__name__}: "
                              f"{str(exc)[:200]})")
        outcomes.append(outcome)
        if report:
            report(outcome)

    run(BASE, force=False)
    for target in dedicated_targets(store, settings) if targets is None else targets:
        run(target, force)
    return outcomes
