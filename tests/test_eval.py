"""`mimic eval` on the tiny trained workspace (the shared `world` fixture of conftest.py):
the report's figures, files and the command."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mimic.core.config import Settings
from mimic.core.store import Store
from mimic.trainer.corpus import Target, load_corpus, resolve
from mimic.trainer.reading import Reading, Vocabulary
from mimic.trainer.report import (
    SECTIONS,
    EvalError,
    Report,
    TargetRow,
    drift,
    evaluate_targets,
    groups,
    markov_messages,
    real_reading,
    training_reading,
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
        assert row.which == "workspace" and row.version == 1
        assert row.val_loss is not None and row.val_loss > 0
        assert row.anyone_loss is not None and row.anyone_loss > 0
        assert 0 < row.generated <= 10
        assert row.leak_filtered == 0  # what the bot serves never quotes 40+ chars
        for name in ("leak_raw", "leak_markov", *(f"{part}.{field}" for part in
                     ("model", "real") for field in ("first_word_real", "real_words",
                                                      "real_pairs", "distinct_2"))):
            value = row.figure(name)
            assert value is not None and 0 <= value <= 1, (row.target.label, name, value)
        # The word guard: every word served is one the workspace uses.
        assert row.figure("model.real_words") == 1.0
        assert row.samples and not any(PING.search(t) for t in row.samples + row.markov_samples)
        assert row.history
        if row.is_person:
            for name in ("fidelity_model", "fidelity_real", "fidelity_markov"):
                assert 0 <= getattr(row, name) <= 1
        else:
            assert row.fidelity_model is None  # a channel is not an author
    # Two voices as distinct as CAPS and lowercase: the real messages are told apart.
    assert all(r.fidelity_real == 1 for r in report.rows if r.is_person)
    alice = report.rows[0]
    assert alice.real is not None and alice.real.capitalised == 1.0  # she SHOUTS
    with store.session() as session:  # more held-out messages than were drawn: all are read
        held = load_corpus(session, settings, targets(store, "@alice")[0]).val
    assert len(held) > 10
    assert alice.real.length == pytest.approx(statistics.mean(len(t) for t in held))
    # ... and nearly always did (a few lowercase messages of the base export's among them);
    # the training messages' words are the vocabulary's own, so not counted.
    assert alice.trained is not None and alice.trained.capitalised > 0.9
    assert alice.trained.real_words is None and alice.trained.length

    folder = write_report(report, tmp_path / "report").parent
    text = (folder / "report.md").read_text()
    assert all(heading in text for heading in SECTIONS)
    assert "@alice" in text and "#general" in text and "first word real" in text
    for png in ("loss_curves.png", "comparison.png"):
        assert (folder / png).read_bytes()[:4] == b"\x89PNG"
    # The same figures unrounded, for scripts: the means and each target's.
    figures = json.loads((folder / "report.json").read_text())
    assert figures["seed"] == report.seed and figures["samples"] == report.samples
    assert figures["overall"] == report.overall()
    assert [t["target"] for t in figures["targets"]] == [r.target.label for r in report.rows]
    assert figures["targets"][0]["real.length"] == alice.real.length
    assert figures["targets"][0]["leak_filtered"] == 0


def test_answers_in_conversation_are_measured_too(world: tuple[Store, Settings],
                                                 tmp_path: Path) -> None:
    """--context conversation: each message answers the channel's messages before one of the
    person's held-out ones; the same yardstick, and the report says which it was."""
    store, settings = world
    report = evaluate_targets(store, settings, targets(store, "@alice", "@bob"), samples=10,
                              seed=1, context="conversation")
    assert report.context == "conversation"
    for row in report.rows:
        assert 0 < row.generated <= 10 and row.leak_filtered == 0
        assert row.figure("model.real_words") == 1.0
        assert row.fidelity_model is not None
    text = write_report(report, tmp_path / "report").read_text()
    assert "channel messages before each held-out one" in text


def test_one_person_skips_fidelity_and_no_model_is_an_error(
        world: tuple[Store, Settings]) -> None:
    store, settings = world
    report = evaluate_targets(store, settings, targets(store, "@alice", "@carol"), samples=5)
    assert [r.target.label for r in report.rows] == ["@alice"]
    assert report.rows[0].fidelity_model is None and not report.people
    assert any("at least two people" in n for n in report.notes)
    assert any("@carol has no model" in n for n in report.notes)
    with pytest.raises(EvalError, match="mimic train --all"):
        evaluate_targets(store, settings, targets(store, "@carol"), samples=5)


def test_the_report_says_when_the_held_out_messages_changed_habits() -> None:
    """Beside each figure of the held-out messages, the training messages': where the
    held-out ones start with a capital more than 5 points more or less often, or run more than
    10 % longer or shorter, the report says so in words."""
    def reading(capitalised: float, length: float) -> Reading:
        return Reading(1.0, capitalised, 1.0, 1.0, 0.9, length)

    def report(real: Reading, trained: Reading) -> Report:
        row = TargetRow(Target("user:U1", "@alice"), 1, "workspace", 100, 1.2, 1.4, 10,
                        model=trained, real=real, trained=trained)
        return Report(datetime.now(UTC), 10, 0, [row], [], 1.0)

    assert drift(report(reading(0.66, 55), reading(0.70, 60))) == []
    said = drift(report(reading(0.60, 70), reading(0.70, 60)))
    assert len(said) == 2
    assert said[0].startswith("The held-out messages start with a capital in 60% of cases, "
                              "the training messages in 70%: replies follow the training")
    assert said[1].startswith("The held-out messages run 70 characters on average, the "
                              "training messages 60: replies follow")


def test_a_targets_real_messages_are_read_whole_and_their_variety_over_the_newest() -> None:
    """Shares and length over every held-out (or training) message, not the newest few alone:
    a habit of the last messages does not stand for the set. Variety is read over the newest
    `variety` (distinct-2 falls with more messages)."""
    messages = ["Same old words"] * 8 + ["fresh pair one more", "other pair two"]  # in time
    vocabulary = Vocabulary.of(messages)
    real = real_reading(messages, vocabulary, 2, long=1000)
    assert real.capitalised == 0.8 and real.length == 14.5
    assert real.distinct_2 == 1.0  # the newest two; any two of the old ones: 0.5
    assert real_reading(messages[:8], vocabulary, 2, long=1000).distinct_2 == 0.5
    trained = training_reading(messages, vocabulary, 2, long=1000)
    assert (trained.capitalised, trained.length, trained.distinct_2) == (0.8, 14.5, 1.0)
    assert trained.real_words is None and trained.first_word_real is None


def test_helpers() -> None:
    assert groups([str(i) for i in range(12)]) == ["0\n1\n2\n3\n4", "5\n6\n7\n8\n9"]
    assert groups(["a", "b"]) == ["a\nb"] and groups([]) == []
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
    assert all(f"{label} (workspace v1)" in done.stdout
               for label in ("@alice", "@bob", "#general"))
    assert "1st word" in done.stdout and "distinct-2" in done.stdout
    assert "Their training messages (what the models learned from): capital" in done.stdout
    assert list((settings.data_dir / "reports").glob("*/report.md"))

