"""A tiny trained workspace (real torch, seconds to build), built once per test session and
copied for each test that changes it."""

from __future__ import annotations

import shutil
from pathlib import Path

from mimic.core.config import Settings
from mimic.core.store import Store, make_engine, upgrade
from mimic.exporter.importer import import_export
from mimic.trainer.corpus import BASE, resolve
from mimic.trainer.train import train
from tests import workspace

TINY_MODEL = {"hidden_size": 48, "embed_dim": 16, "num_layers": 1, "context_dim": 8,
              "rank": 8}
QUICK = {"max_seconds": 0, "max_steps": 60, "eval_every_steps": 30, "batch_size": 8,
         "seq_len": 32}
# The workspace model covers @alice, @bob, #general and #random; the private #secret, which it
# never reads, gets a dedicated model.
TRAINED = ["#secret"]


def settings_for(root: Path, database_url: str | None = None, **extra: object) -> Settings:
    return Settings(_env_file=None, DATABASE_URL=database_url or f"sqlite:///{root}/m.db",
                    MIMIC_DATA_DIR=str(root / "data"), MIMIC_MIN_CHARS=500,
                    MIMIC_DEVICE="cpu", **extra)


def build(root: Path, database_url: str | None = None) -> Settings:
    """Import the tiny workspace into `database_url` (default: root/m.db) and train it."""
    settings = settings_for(root, database_url)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    store = Store(engine)
    import_export(store, workspace.build(root / "export"))
    train(store, settings, BASE, model_overrides=TINY_MODEL, train_overrides=QUICK)
    for name in TRAINED:
        with store.session() as s:
            target = resolve(s, name)
        train(store, settings, target, train_overrides=QUICK)
    if store.dialect == "sqlite":
        # Everything into m.db itself (WAL mode keeps recent pages aside until a checkpoint):
        # copy() takes that one file.
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return settings


def copy(template: Path, root: Path, **extra: object) -> tuple[Store, Settings]:
    """A private copy of the template workspace: its database and model files."""
    shutil.copy(template / "m.db", root / "m.db")
    shutil.copytree(template / "data", root / "data")
    settings = settings_for(root, **extra)
    return Store(make_engine(settings.database_url)), settings
