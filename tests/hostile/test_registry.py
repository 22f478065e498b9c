"""The model registry under attack and bad luck: ids that climb out of the data folder, two
trainers publishing one target at once, a person opting out while their model trains, and a
nightly run whose targets fail in ways that are not TrainError."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select

from mimic.bot.models import ModelCache
from mimic.bot.replies import Responder
from mimic.core.config import Settings
from mimic.core.lock import retrain_lock
from mimic.core.store import Coverage, ModelVersion, Store
from mimic.trainer.corpus import Target, may_have_model, resolve
from mimic.trainer.privacy import opt_out
from mimic.trainer.registry import (
    NotAllowed,
    RegistryError,
    delete_target,
    publish,
    version_dir,
    versions,
)
from mimic.trainer.train import retrain_changed

ROW = {"parent_id": None, "data_watermark": None, "data_digest": "d", "chars_trained": 1,
       "val_loss": 1.0, "device": "cpu", "seconds": 0.0}


def files(write: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    def fill(folder: Path) -> None:
        if write is not None:
            write(folder)
        (folder / "model.pt").write_text(folder.name)  # which staging folder wrote it
    return fill


def test_paths_outside_the_models_folder_are_refused(world: tuple[Store, Settings],
                                                     tmp_path: Path) -> None:
    store, settings = world
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    escape = Target("user:U1/../../../victim", "@mallory")
    with pytest.raises(RegistryError, match="refuses to touch it"):
        delete_target(store, settings.data_dir, escape)
    with pytest.raises(RegistryError, match="refuses to touch it"):
        publish(store, settings.data_dir, escape, files(), lambda _f: None, ROW, promote=True)
    with store.session() as s:
        row = s.scalars(select(ModelVersion)).first()
        assert row is not None
        row.path = "../victim"  # a tampered row
        with pytest.raises(RegistryError, match="refuses to touch it"):
            version_dir(settings.data_dir, row)
        s.rollback()
    assert (victim / "precious.txt").read_text() == "keep me"


def test_a_request_without_slack_ids_touches_nothing(world: tuple[Store, Settings]) -> None:
    store, settings = world
    responder = Responder(settings, store, ModelCache(settings.data_dir))
    try:
        before = sorted(p for p in settings.data_dir.rglob("*"))
        reply = responder.handle("U1/../../..", "C1", "optout --forget")
        assert "Slack's user and channel ids" in reply.text
        assert sorted(p for p in settings.data_dir.rglob("*")) == before
    finally:
        responder.close()


def test_two_trainers_publishing_one_target_never_share_a_folder(
        world: tuple[Store, Settings]) -> None:
    store, settings = world
    with store.session() as s:
        secret = resolve(s, "#secret")  # it has a dedicated v1
    both_written = threading.Barrier(2, timeout=30)
    results: list[ModelVersion] = []

    def trainer() -> None:
        results.append(publish(store, settings.data_dir, secret, files(lambda _f:
                               both_written.wait()), lambda _f: None, ROW, promote=True))

    threads = [threading.Thread(target=trainer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(v.version for v in results) == [2, 3]
    with store.session() as s:
        rows = {v.version: v for v in versions(s, secret.key)}
    assert [rows[n].status for n in (1, 2, 3)] == ["retired", "retired", "active"]
    written = {n: (version_dir(settings.data_dir, rows[n]) / "model.pt").read_text()
               for n in (2, 3)}
    assert len(set(written.values())) == 2, "each version keeps the files its trainer wrote"
    leftovers = [p.name for p in (settings.data_dir / "models" / "channel-G1").iterdir()]
    assert sorted(leftovers) == ["1", "2", "3"]


def test_every_command_that_trains_takes_the_retrain_lock(world: tuple[Store, Settings],
                                                          tmp_path: Path) -> None:
    store, settings = world
    env = {**os.environ, "DATABASE_URL": settings.database_url,
           "MIMIC_DATA_DIR": str(settings.data_dir), "MIMIC_MIN_CHARS": "500"}
    commands = (["train", "@alice"], ["train", "--all"], ["retrain"],
                ["demo", "--folder", str(settings.data_dir), "--limit", "10"])

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mimic.cli", *args], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)

    with retrain_lock(settings), ThreadPoolExecutor(len(commands)) as pool:
        # All at once: each only starts up and meets the lock (one after another: ~20 s).
        for args, done in zip(commands, pool.map(run, commands), strict=True):
            assert done.returncode == 1, (args, done.stdout, done.stderr)
            assert "already going" in done.stderr and "Traceback" not in done.stderr, args


@pytest.mark.parametrize("when", ["writing", "verifying", "promoting"])
def test_opting_out_while_the_model_trains_publishes_nothing(
        world: tuple[Store, Settings], when: str) -> None:
    store, settings = world
    with store.session() as s:
        bob = resolve(s, "@bob")
        assert versions(s, bob.key) == []  # the workspace model covers bob; nothing of his own
    asked: list[int] = []

    def opt_out_now(_folder: Path | None = None) -> None:
        opt_out(store, settings.data_dir, "U2")

    def allowed(session: object) -> bool:
        asked.append(1)
        if when == "promoting" and len(asked) == 2:  # after the files are in place
            opt_out_now()
        return may_have_model(session, settings, bob)  # type: ignore[arg-type]

    with pytest.raises(NotAllowed, match="opted out"):
        publish(store, settings.data_dir, bob,
                files(opt_out_now if when == "writing" else None),
                opt_out_now if when == "verifying" else lambda _f: None, ROW, promote=True,
                allowed=allowed)
    with store.session() as s:
        assert versions(s, bob.key) == []
        assert s.scalars(select(Coverage).where(Coverage.target == bob.key)).all() == []
    folder = settings.data_dir / "models" / "user-U2"
    assert not folder.exists() or not any(folder.iterdir())


def test_a_failing_target_does_not_stop_the_nightly_run(world: tuple[Store, Settings]) -> None:
    store, settings = world
    with store.session() as s:
        alice, bob = resolve(s, "@alice"), resolve(s, "@bob")
    # A full disk or a broken mount for one target: its folder cannot be written.
    blocked = settings.data_dir / "models" / "user-U1"
    shutil.rmtree(blocked, ignore_errors=True)
    blocked.write_text("not a folder")
    quick = settings.model_copy(update={"target_minutes": 0.02})
    outcomes = retrain_changed(store, quick, targets=[alice, bob], force=True)
    by = {o.target.key: o for o in outcomes}
    assert by[alice.key].status == "failed" and "training failed" in by[alice.key].note
    assert "its active model is unchanged" in by[alice.key].describe()
    assert by[bob.key].status in ("active", "kept")


def test_private_targets_are_marked_in_retrain_events(world: tuple[Store, Settings]) -> None:
    from mimic.bot.retrain import retrain_job

    store, settings = world
    with store.session() as s:
        secret = resolve(s, "#secret")
    events: list[dict] = []
    quick = settings.model_copy(update={"target_minutes": 0.02})
    retrain_job(store, quick, secret, events.append)
    outcomes = {e["text"].split(":")[0]: e for e in events if e["event"] == "outcome"}
    assert outcomes["#secret"]["private"] is True
    assert outcomes["workspace"]["private"] is False

