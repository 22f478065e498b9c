"""`mimic sample` and `mimic models`: what the bot would say and what it has, from the shell,
with clear errors and output that pipes."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mimic.core.config import Settings
from mimic.core.store import Channel, Store
from mimic.trainer.registry import LENGTHS


def mimic(settings: Settings, cwd: Path, *args: str,
          **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": settings.database_url, "COLUMNS": "200",
           "MIMIC_DATA_DIR": str(settings.data_dir), "MIMIC_DEVICE": "cpu",
           "MIMIC_MIN_CHARS": "500", **extra}
    return subprocess.run([sys.executable, "-m", "mimic.cli", *args], cwd=cwd, env=env,
                          text=True, capture_output=True, timeout=120)


def test_sample_prints_novel_inert_messages_and_explains_errors(
        world: tuple[Store, Settings], tmp_path: Path) -> None:
    _store, settings = world
    cases = [
        (["@alice", "--temp", "0.9", "-n", "4", "--seed", "we should"], ""),
        (["workspace", "-n", "2"], ""),  # the shared model itself, nobody in particular
        (["@alice", "--temp", "3"], "out of range"),
        (["@nobody"], "No person called @nobody"),
        (["@carol"], "has no model yet"),
    ]
    # Two at a time: each process spends ~4 s importing torch, and none changes the store.
    with ThreadPoolExecutor(2) as pool:
        done, anyone, *failures = pool.map(
            lambda case: mimic(settings, tmp_path, "sample", *case[0]), cases)
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.rstrip("\n").split("\n")
    assert "@alice · workspace model v1 · temp 0.9" in header
    assert 1 <= len(lines) <= 4 and all(line.startswith("we should") for line in lines)
    assert anyone.returncode == 0, anyone.stderr
    header, *lines = anyone.stdout.rstrip("\n").split("\n")
    assert "workspace · workspace model v1" in header and 1 <= len(lines) <= 2
    for failed, (_args, message) in zip(failures, cases[2:], strict=True):
        assert failed.returncode == 1 and message in failed.stderr, failed.stderr
        assert "Traceback" not in failed.stderr

    # A damaged version: named, with what to do, not a traceback.
    (settings.data_dir / "models" / "base" / "1" / LENGTHS).write_text('{"long_message": 1')
    failed = mimic(settings, tmp_path, "sample", "@alice")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    said = " ".join(failed.stderr.split())
    assert "the workspace model v1 does not load" in said and "mimic rollback base" in said


def test_models_piped_prints_whole_names_in_plain_columns(world: tuple[Store, Settings],
                                                          tmp_path: Path) -> None:
    store, settings = world
    long = "secret-plans-for-the-cat-party-that-nobody-outside-this-channel-may-know-of"
    with store.session() as s:
        s.get(Channel, "G1").name = long  # type: ignore[union-attr]
    env_columns = {"COLUMNS": "80"}
    done = mimic(settings, tmp_path, "models", **env_columns)
    assert done.returncode == 0, done.stderr
    (line,) = [row for row in done.stdout.splitlines() if long in row]  # `| grep secret`
    assert line.split()[:3] == [f"#{long}", "v1", "active"]
    assert not any(ch in done.stdout for ch in "…│┃━")  # no ellipses, no box drawing
