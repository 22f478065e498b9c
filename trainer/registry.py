"""The model registry: version folders under MIMIC_DATA_DIR/models/<target>/<version>/ and a
`model_versions` row for each. A folder is written under a temporary name and renamed into
place, and its row is added only after that, so a crash never leaves a half model behind.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mimic.store import ModelVersion, Store
from trainer.corpus import Target
from trainer.model import CharLSTM, CheckpointError, load_bundle
from trainer.novelty import NoveltyIndex
from trainer.vocab import Vocab

# A version folder's files (with config.json, metrics.json and loss.png for people to read).
WEIGHTS, NOVELTY = "model.pt", "novelty.npy"


class RegistryError(RuntimeError):
    pass


def models_root(data_dir: Path) -> Path:
    return Path(data_dir) / "models"


def version_dir(data_dir: Path, row: ModelVersion) -> Path:
    """Where a version's files are. Rows hold paths relative to MIMIC_DATA_DIR, so the data
    folder can move (or be copied to another machine) without touching the registry."""
    return Path(data_dir) / row.path


@dataclass(frozen=True)
class LoadedModel:
    """A published version, ready to sample from: what the bot, `mimic sample` and
    `mimic eval` serve."""

    version_id: int
    version: int
    model: CharLSTM
    vocab: Vocab
    novelty: NoveltyIndex
    reference: CharLSTM | None = None  # the base it was fine-tuned from: sampled against


def load_version(data_dir: Path, row: ModelVersion, device: torch.device | str = "cpu",
                 parent: ModelVersion | None = None) -> LoadedModel:
    """A version ready to serve; with its `parent` (the base it started from) as reference
    when that still loads and shares its vocabulary."""
    folder = version_dir(data_dir, row)
    model, vocab = load_bundle(folder / WEIGHTS, device)
    if vocab is None:
        raise RegistryError(f"{folder / WEIGHTS} has no vocabulary")
    reference = None
    if parent is not None:
        try:
            base, base_vocab = load_bundle(version_dir(data_dir, parent) / WEIGHTS, device)
            reference = base if base_vocab == vocab else None
        except CheckpointError:  # a deleted or broken base: serve plainly, not not at all
            reference = None
    return LoadedModel(row.id, row.version, model, vocab, NoveltyIndex.load(folder / NOVELTY),
                       reference)


def parent_of(session: Session, row: ModelVersion) -> ModelVersion | None:
    """The base version `row` was fine-tuned from (whatever its status now)."""
    parent = session.get(ModelVersion, row.parent_id) if row.parent_id else None
    if parent is not None:
        session.expunge(parent)
    return parent


def active_version(session: Session, target_key: str) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(
        ModelVersion.target == target_key, ModelVersion.status == "active")).first()


def versions(session: Session, target_key: str | None = None) -> list[ModelVersion]:
    query = select(ModelVersion).order_by(ModelVersion.target, ModelVersion.version)
    if target_key is not None:
        query = query.where(ModelVersion.target == target_key)
    return list(session.scalars(query))


def publish(
    store: Store,
    data_dir: Path,
    target: Target,
    write: Callable[[Path], None],
    verify: Callable[[Path], None],
    row: dict[str, Any],
    promote: bool,
) -> ModelVersion:
    """Write a new version's files, check they load, add its row, and make it the active one
    if `promote`; otherwise it is 'kept' (or 'failed' if it would not load: never promoted).

    `write(folder)` fills the folder; `verify(folder)` raises if the model cannot be loaded.
    """
    root = models_root(data_dir) / target.dirname
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        write(staging)
        try:
            verify(staging)
            status = "candidate"
        except Exception:  # noqa: BLE001 - any load failure means: never promote
            status = "failed"
        with store.session() as session:
            number = (session.scalar(select(func.max(ModelVersion.version))
                                     .where(ModelVersion.target == target.key)) or 0) + 1
            final = root / str(number)
            if final.exists():  # left by a crash between rename and commit: it has no row
                shutil.rmtree(final)
            staging.rename(final)
            version = ModelVersion(target=target.key, version=number,
                                   path=final.relative_to(data_dir).as_posix(),
                                   status=status, **row)
            session.add(version)
            session.flush()
            if status == "candidate":
                active = active_version(session, target.key)
                if promote and active is not None:
                    active.status = "retired"
                version.status = "active" if promote else "kept"
            return version
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def rollback(store: Store, target: Target) -> tuple[ModelVersion, ModelVersion]:
    """Re-activate the version that was active before this one (never a 'kept' or 'failed'
    one); returns (now active, was active)."""
    with store.session() as session:
        active = active_version(session, target.key)
        if active is None:
            raise RegistryError(f"{target.label} has no active model to roll back from.")
        previous = session.scalars(
            select(ModelVersion).where(ModelVersion.target == target.key,
                                       ModelVersion.version < active.version,
                                       ModelVersion.status == "retired")
            .order_by(ModelVersion.version.desc())).first()
        if previous is None:
            raise RegistryError(f"{target.label} has no earlier working version than "
                                f"v{active.version}.")
        active.status, previous.status = "retired", "active"
        return previous, active


def delete_target(store: Store, data_dir: Path, target: Target) -> int:
    """Remove every version of a target, files and rows; returns how many were removed."""
    with store.session() as session:
        rows = versions(session, target.key)
        for row in rows:
            session.delete(row)
    shutil.rmtree(models_root(data_dir) / target.dirname, ignore_errors=True)
    return len(rows)
