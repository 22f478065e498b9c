"""Training jobs and the registry with real torch on a tiny workspace: publish, promotion,
rollback, corrupt checkpoints, interrupted processes, and what needs retraining."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError
from rich.console import Console
from sqlalchemy import select, update

from mimic.core.config import Settings
from mimic.core.store import Message, ModelVersion, Store, make_engine, upgrade
from mimic.exporter.importer import import_export
from mimic.trainer.corpus import BASE, resolve
from mimic.trainer.registry import (
    WEIGHTS,
    RegistryError,
    active_version,
    publish,
    rollback,
    version_dir,
    versions,
)
from mimic.trainer.train import TrainError, needs_training, retrain_changed, train
from tests import workspace

TINY_MODEL = {"hidden_size": 48, "embed_dim": 16, "num_layers": 1}
QUICK = {"max_seconds": 0, "max_steps": 40, "eval_every_steps": 20, "batch_size": 8,
         "seq_len": 32}


@pytest.fixture
def trained(tmp_path: Path) -> tuple[Store, Settings]:
    """A workspace with an active base model."""
    url = f"sqlite:///{tmp_path}/m.db"
    upgrade(make_engine(url))
    store = Store(make_engine(url))
    import_export(store, workspace.build(tmp_path / "export"))
    settings = Settings(_env_file=None, DATABASE_URL=url, MIMIC_DATA_DIR=str(tmp_path / "data"),
                        MIMIC_MIN_CHARS=500, MIMIC_DEVICE="cpu")
    outcome = train(store, settings, BASE, model_overrides=TINY_MODEL, train_overrides=QUICK)
    assert outcome.status == "active"
    return store, settings


def target(store: Store, name: str):  # noqa: ANN201
    with store.session() as s:
        return resolve(s, name)


def test_base_then_fine_tune_publishes_complete_versions(trained: tuple[Store, Settings]) -> None:
    store, settings = trained
    alice = target(store, "@alice")
    # MIMIC_PRECISION reaches the fine-tune (the tiny model would measure float32 faster).
    outcome = train(store, settings.model_copy(update={"precision": "bfloat16"}), alice,
                    train_overrides=QUICK)
    assert (outcome.status, outcome.version, outcome.val_before) == ("active", 1, None)
    with store.session() as s:
        row = active_version(s, alice.key)
        base = active_version(s, BASE.key)
        assert row is not None and base is not None and row.parent_id == base.id
        folder = version_dir(settings.data_dir, row)
    assert folder == settings.data_dir / "models" / "user-U1" / "1"
    assert {p.name for p in folder.iterdir()} == {
        "model.pt", "config.json", "metrics.json", "loss.png", "novelty.npy"}
    config = json.loads((folder / "config.json").read_text())
    assert config["label"] == "@alice" and config["model"]["hidden_size"] == 48
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["history"] and metrics["precision"] == "bfloat16"
    assert not list(folder.parent.glob(".tmp-*"))


def test_a_precision_mimic_cannot_train_in_is_refused_with_the_setting_named() -> None:
    with pytest.raises(ValidationError, match="MIMIC_PRECISION"):
        Settings(_env_file=None, MIMIC_PRECISION="half")


def test_a_worse_model_is_kept_but_not_promoted_and_rollback(
        trained: tuple[Store, Settings]) -> None:
    store, settings = trained
    alice = target(store, "@alice")
    first = train(store, settings, alice, train_overrides=QUICK)
    # A learning rate this high wrecks the weights: the new version must not replace v1.
    worse = train(store, settings, alice, train_overrides={**QUICK, "lr": 5.0,
                                                          "warmup_steps": 0})
    assert worse.status == "kept" and worse.val_after > worse.val_before
    assert worse.val_before == pytest.approx(first.val_after, rel=1e-4)
    better = train(store, settings, alice, train_overrides={**QUICK, "max_steps": 80})
    assert better.status == "active" and better.version == 3
    now, was = rollback(store, alice)
    assert (now.version, was.version) == (1, 3)  # v2 was never active: not a rollback target
    with store.session() as s:
        statuses = {v.version: v.status for v in versions(s, alice.key)}
    assert list(statuses.values()).count("active") == 1 and statuses[3] == "retired"


def test_a_log_gets_a_line_at_each_validation_a_terminal_only_the_bar(
        trained: tuple[Store, Settings]) -> None:
    """`mimic train` from cron writes to a log, where the progress bar shows nothing."""
    store, settings = trained
    alice = target(store, "@alice")
    logged, shown = io.StringIO(), io.StringIO()
    train(store, settings, alice, train_overrides=QUICK, console=Console(file=logged))
    train(store, settings, alice, train_overrides=QUICK,
          console=Console(file=shown, force_terminal=True))
    lines = [line for line in logged.getvalue().splitlines() if line.startswith("training")]
    assert [line.split(", ")[1] for line in lines] == ["step 20", "step 40"]
    assert all(re.search(r"^training @alice: \d+ s, step \d+, validation loss \d\.\d{3}, "
                         r"[\d,]+ chars/s$", line) for line in lines), lines
    assert "validation loss" not in shown.getvalue()


def test_rollback_without_an_earlier_version_says_so(trained: tuple[Store, Settings]) -> None:
    store, _ = trained
    with pytest.raises(RegistryError, match="no earlier working version"):
        rollback(store, BASE)
    with pytest.raises(RegistryError, match="no active model"):
        rollback(store, target(store, "@bob"))


def test_a_checkpoint_that_does_not_load_is_never_promoted(
        trained: tuple[Store, Settings]) -> None:
    store, settings = trained
    from mimic.trainer.train import _verify

    def corrupt(folder: Path) -> None:
        (folder / WEIGHTS).write_bytes(b"\x80\x02 not a checkpoint")
        (folder / "novelty.npy").write_bytes(b"")

    row = {"parent_id": None, "data_watermark": None, "data_digest": "x", "chars_trained": 1,
           "val_loss": 0.0, "device": "cpu", "seconds": 0.0}
    version = publish(store, settings.data_dir, BASE, corrupt, _verify, row, promote=True)
    assert version.status == "failed"
    with store.session() as s:
        assert active_version(s, BASE.key).version == 1  # type: ignore[union-attr]


def test_too_little_data_and_no_base_are_clear_errors(tmp_path: Path,
                                                       trained: tuple[Store, Settings]) -> None:
    store, settings = trained
    strict = settings.model_copy(update={"min_chars": 10**7})
    with pytest.raises(TrainError, match="needs at least 10,000,000"):
        train(store, strict, target(store, "@alice"))
    url = f"sqlite:///{tmp_path}/empty.db"
    upgrade(make_engine(url))
    empty = Store(make_engine(url))
    import_export(empty, workspace.build(tmp_path / "export2"))
    with pytest.raises(TrainError, match="mimic train --base"):
        train(empty, settings, target(empty, "@alice"))


def test_retrain_changed_trains_only_what_changed(trained: tuple[Store, Settings]) -> None:
    store, settings = trained
    alice, bob = target(store, "@alice"), target(store, "@bob")
    assert needs_training(store, settings, alice)
    train(store, settings, alice, train_overrides=QUICK)
    train(store, settings, bob, train_overrides=QUICK)
    assert not needs_training(store, settings, alice)
    assert not needs_training(store, settings, BASE)

    with store.session() as s:  # an edit in alice's history changes her corpus (and the base)
        s.execute(update(Message).where(Message.text == "CATS RULE THE WORLD!!")
                  .values(text="CATS RULE THE WHOLE WORLD!!"))
    assert needs_training(store, settings, alice) and not needs_training(store, settings, bob)

    outcomes = retrain_changed(store, settings.model_copy(update={
        "base_minutes": 0.02, "target_minutes": 0.02}), targets=[alice, bob])
    by_label = {o.target.label: o for o in outcomes}
    assert by_label["workspace"].status in ("active", "kept")
    assert by_label["@alice"].status in ("active", "kept")
    if by_label["workspace"].status == "kept":
        assert by_label["@bob"].status == "skipped"


@pytest.mark.slow
def test_a_training_process_killed_mid_run_leaves_the_registry_untouched(
        trained: tuple[Store, Settings]) -> None:
    store, settings = trained
    with store.session() as s:
        before = [(v.target, v.version, v.status) for v in s.scalars(select(ModelVersion))]
    models = sorted(p.relative_to(settings.data_dir) for p in settings.data_dir.rglob("*"))
    env = {**os.environ, "DATABASE_URL": settings.database_url,
           "MIMIC_DATA_DIR": str(settings.data_dir), "MIMIC_MIN_CHARS": "500",
           "MIMIC_DEVICE": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "mimic.cli", "train", "@alice",
                             "--minutes", "5"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # Wait until it is really training: it has burnt a few seconds of CPU.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _cpu_seconds(proc.pid) < 4:
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with store.session() as s:
        after = [(v.target, v.version, v.status) for v in s.scalars(select(ModelVersion))]
    assert after == before
    # The same files, besides the lock every training command takes.
    assert sorted(p.relative_to(settings.data_dir) for p in settings.data_dir.rglob("*")
                  if p.name != "retrain.lock") == models


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
