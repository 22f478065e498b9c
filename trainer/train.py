"""Training jobs: the workspace base model, per-target fine-tunes, and `retrain_changed`, the
one function the nightly scheduler and the admin `retrain` command call.

A version folder holds: model.pt (weights + config + vocabulary, loaded with
weights_only=True), config.json, metrics.json, loss.png and, for every model that can be
served, novelty.npy (the index the sampler uses to refuse verbatim copies of the target's
messages).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from mimic.core.config import Settings
from mimic.core.store import ModelVersion, Store
from mimic.trainer.corpus import (
    BASE,
    Corpus,
    Target,
    load_corpus,
    may_have_model,
    targets_with_data,
)
from mimic.trainer.device import pick_device
from mimic.trainer.fit import FitResult, TrainConfig, evaluate, fit, throughput
from mimic.trainer.model import (
    CharLSTM,
    ModelConfig,
    flops_per_char,
    load_bundle,
    param_count,
    save_checkpoint,
    size_for,
)
from mimic.trainer.novelty import NoveltyIndex
from mimic.trainer.registry import (
    NOVELTY,
    WEIGHTS,
    NotAllowed,
    active_version,
    publish,
    version_dir,
)
from mimic.trainer.vocab import Vocab

# Fine-tuning starts from a trained net: a gentler peak rate than from scratch, short warmup.
FINE_TUNE = {"lr": 1e-3, "warmup_steps": 10}
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
    status: str  # active | kept | failed | skipped (failed: see `note` when version is None)
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
                   "failed": "failed to load, not promoted"}[self.status]
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


def _write_version(folder: Path, model: CharLSTM, vocab: Vocab, corpus: Corpus,
                   result: FitResult, train_cfg: TrainConfig, meta: dict[str, Any]) -> None:
    save_checkpoint(model, model.config, folder / WEIGHTS, vocab)
    (folder / "config.json").write_text(json.dumps({
        "target": corpus.target.key, "label": corpus.target.label,
        "model": asdict(model.config), "train": asdict(train_cfg),
        "vocab": vocab.to_json(), **meta}, indent=2, ensure_ascii=False))
    (folder / "metrics.json").write_text(json.dumps({
        "best_val_loss": result.best_val_loss, "steps": result.steps,
        "chars_trained": result.chars_trained, "stopped": result.stopped_reason,
        "history": result.history}, indent=2))
    if corpus.target != BASE:  # the base is never served, and its index would be huge
        NoveltyIndex.build(corpus.train + corpus.val).save(folder / NOVELTY)
    _plot(result.history, f"{corpus.target.label}", folder / "loss.png")


def _verify(folder: Path) -> None:
    load_bundle(folder / WEIGHTS)
    if (folder / NOVELTY).exists() or folder.parent.name != BASE.dirname:
        NoveltyIndex.load(folder / NOVELTY)


def train(
    store: Store,
    settings: Settings,
    target: Target,
    *,
    minutes: float | None = None,
    console: Console | None = None,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
) -> Outcome:
    """Train one target (the base from scratch, anything else fine-tuned from the active base)
    and publish it; the new version is promoted only if it is no worse on the current
    validation set than the active one."""
    device = pick_device(settings.device)
    with store.session() as session:
        corpus = load_corpus(session, settings, target)
        base = active_version(session, BASE.key) if target != BASE else None
        previous = active_version(session, target.key)
    if target != BASE and base is None:
        raise TrainError("There is no workspace base model yet: run `mimic train --base` "
                         "first (or `mimic train --all`, which does it).")
    if corpus.chars < settings.min_chars or not corpus.val:
        raise TrainError(f"{target.label} has {corpus.chars:,} characters of messages mimic "
                         f"may learn from; a model needs at least {settings.min_chars:,} "
                         "(MIMIC_MIN_CHARS).")

    if base is None:
        vocab = Vocab.build(corpus.train)
        cfg = replace(TrainConfig(max_seconds=60 * (minutes or settings.base_minutes)),
                      **(train_overrides or {}))
        model = CharLSTM(affordable_size(corpus.chars, len(vocab), cfg, device,
                                         **(model_overrides or {})))
    else:
        model, vocab = load_bundle(version_dir(settings.data_dir, base) / WEIGHTS)
        assert vocab is not None
        cfg = replace(TrainConfig(max_seconds=60 * (minutes or settings.target_minutes),
                                  **FINE_TUNE), **(train_overrides or {}))
    train_ids, val_ids = vocab.encode_corpus(corpus.train), vocab.encode_corpus(corpus.val)

    started = time.perf_counter()
    with _progress_bar(console) as bar:
        task = bar.add_task(f"training {target.label}", total=cfg.max_seconds or None,
                            step=0, loss="…", speed="…")

        def show(row: dict[str, Any]) -> None:
            loss = row["val_loss"] or row["train_loss"]
            bar.update(task, completed=row["seconds"], step=row["step"],
                       loss=f"{loss:.3f}" if loss else "…", speed=f"{row['chars_per_s']:,.0f}")

        result = fit(model, train_ids, val_ids, cfg, device, on_progress=show)
    seconds = time.perf_counter() - started
    new_loss = evaluate(model, val_ids, device)
    old_loss = _loss_of(settings.data_dir, previous, val_ids, device)

    try:
        version = publish(
            store, settings.data_dir, target,
            write=lambda folder: _write_version(folder, model.cpu(), vocab, corpus, result,
                                                cfg, {"device": str(device)}),
            verify=_verify,
            row={"parent_id": base.id if base else None, "data_watermark": corpus.watermark,
                 "data_digest": corpus.digest, "chars_trained": result.chars_trained,
                 "val_loss": new_loss, "device": str(device), "seconds": seconds},
            promote=old_loss is None or new_loss <= old_loss,
            allowed=lambda session: may_have_model(session, settings, target),
        )
    except NotAllowed as exc:
        raise TrainError(str(exc)) from None
    return Outcome(target, version.status, version.version, old_loss, new_loss,
                   note=f"stopped: {result.stopped_reason}")


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


def _loss_of(data_dir: Path, version: ModelVersion | None, val_ids: np.ndarray,
             device: Any) -> float | None:
    """The active model's loss on today's validation set; a model that no longer loads (or
    whose vocabulary changed) counts as infinitely bad, so a working one replaces it."""
    if version is None:
        return None
    try:
        model, _ = load_bundle(version_dir(data_dir, version) / WEIGHTS, device)
        return evaluate(model, val_ids, device)
    except Exception:  # noqa: BLE001 - any failure to score means it cannot be kept
        return float("inf")


def needs_training(store: Store, settings: Settings, target: Target) -> bool:
    """True when the target has no active model, or its data changed since that model."""
    with store.session() as session:
        active = active_version(session, target.key)
        if active is None:
            return True
        base = active_version(session, BASE.key)
        if target != BASE and base is not None and active.parent_id != base.id:
            return True  # a newer base: fine-tune from it
        return load_corpus(session, settings, target).digest != active.data_digest


def retrain_changed(
    store: Store,
    settings: Settings,
    *,
    targets: list[Target] | None = None,
    force: bool = False,
    console: Console | None = None,
    report: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Retrain the base when its data changed, then every target whose data (or base) changed.

    `targets` limits the run (default: everyone above MIMIC_MIN_CHARS); `force` retrains them
    even when unchanged (the base only when its data changed). A target that cannot be
    trained is reported as skipped, not fatal.
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
    if targets is None:
        with store.session() as session:
            targets = targets_with_data(session, settings, settings.min_chars)
    for target in targets:
        run(target, force)
    return outcomes
