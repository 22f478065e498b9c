"""`mimic eval` on the tiny trained workspace (the shared `world` fixture of conftest.py):
the report's figures, files and the command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mimic.core.config import Settings
from mimic.core.store import Store
from mimic.trainer.corpus import Target, resolve
from mimic.trainer.report import (
    SECTIONS,
    EvalError,
    evaluate_targets,
    fluency,
    groups,
    markov_messages,
    write_report,
)

PING = re.compile(r"<[@!#]|(?<![\w\u2060])@(?!\u2060)\w")


def targets(store: Store, *names: str) -> list[Target]:
    with store.session() as s:
        return [resolve(s, name) for name in names]


def test_report_figures_and_files(world: tuple[Store, Settings], tmp_path: Path) -> None:
    store, settings = world
    report = evaluate_targets(store, settings, targets(store, "@alice", "@bob", "#general"),
                              samples=10, seed=1)
    assert [r.target.label for r in report.rows] == ["@alice", "@bob", "#general"]
    assert report.people == ["@alice", "@bob"]
    for row in report.rows:
        assert row.val_loss is not None and row.val_loss > 0
        assert row.base_loss is not None and row.base_loss > 0
        assert 0 < row.generated <= 10
        assert row.leak_filtered == 0  # what the bot serves never quotes 40+ chars
        for name in ("leak_raw", "leak_markov", "fluency_model", "fluency_real",
                     "fluency_markov"):
            value = getattr(row, name)
            assert value is not None and 0 <= value <= 1, (row.target.label, name, value)
        assert row.samples and not any(PING.search(t) for t in row.samples + row.markov_samples)
        assert row.history
        if row.is_person:
            for name in ("fidelity_model", "fidelity_real", "fidelity_markov"):
                assert 0 <= getattr(row, name) <= 1
        else:
            assert row.fidelity_model is None  # a channel is not an author
    # Two voices as distinct as CAPS and lowercase: the real messages are told apart.
    assert all(r.fidelity_real == 1 for r in report.rows if r.is_person)

    folder = write_report(report, tmp_path / "report").parent
    text = (folder / "report.md").read_text()
    assert all(heading in text for heading in SECTIONS)
    assert "@alice" in text and "#general" in text
    for png in ("loss_curves.png", "comparison.png"):
        assert (folder / png).read_bytes()[:4] == b"\x89PNG"


def test_one_person_skips_fidelity_and_no_model_is_an_error(
        world: tuple[Store, Settings]) -> None:
    store, settings = world
    report = evaluate_targets(store, settings, targets(store, "@alice", "#random"), samples=5)
    assert [r.target.label for r in report.rows] == ["@alice"]
    assert report.rows[0].fidelity_model is None and not report.people
    assert any("at least two people" in n for n in report.notes)
    assert any("#random has no active model" in n for n in report.notes)
    with pytest.raises(EvalError, match="mimic train --all"):
        evaluate_targets(store, settings, targets(store, "#random"), samples=5)


def test_helpers() -> None:
    assert groups([str(i) for i in range(12)]) == ["0\n1\n2\n3\n4", "5\n6\n7\n8\n9"]
    assert groups(["a", "b"]) == ["a\nb"] and groups([]) == []
    assert fluency(["The CAT, the dog!", "zzz"], {"the", "cat", "dog"}) == 0.8
    assert fluency([""], {"x"}) is None
    lines = ["the boat is slow today", "i think the sea is calm", "my boat needs new paint"]
    assert markov_messages(lines * 5, 4, seed=3) == markov_messages(lines * 5, 4, seed=3)
    assert markov_messages([], 3, seed=0) == [] and markov_messages(["  "], 3, seed=0) == []
    assert len(markov_messages(["hi"], 3, seed=0)) <= 3  # a one-word corpus does not crash


@pytest.mark.slow
def test_cli_prints_the_table_and_writes_the_report(
        world: tuple[Store, Settings], tmp_path: Path) -> None:
    _store, settings = world
    env = {**os.environ, "DATABASE_URL": settings.database_url,
           "MIMIC_DATA_DIR": str(settings.data_dir), "MIMIC_DEVICE": "cpu", "COLUMNS": "200",
           # One thread: batch-1 LSTM steps on a busy 2-core runner spin for seconds each.
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "mimic.cli", "eval", "#general",
                           "--samples", "5"], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "mimic eval" in done.stdout and "fidelity" in done.stdout
    # No people named: the default (people with models) comes along with #general.
    assert all(label in done.stdout for label in ("@alice v1", "@bob v1", "#general v1"))
    assert list((settings.data_dir / "reports").glob("*/report.md"))

