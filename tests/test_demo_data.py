"""The chitchat demo export: deterministic, realistic, and read by `mimic import` like a real
one."""

from __future__ import annotations

import json
import re
import zipfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from mimic.cli import app
from mimic.core.store import Channel, Message, Store, User, make_engine, upgrade
from mimic.exporter import demo_data
from mimic.exporter.demo_data import DemoDataError, DemoStats, build_demo_export, load_chitchat
from mimic.exporter.importer import import_export

LIMIT = 200
pytestmark = pytest.mark.slow  # each build reads the whole 258k-message dataset


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoStats]:
    path = tmp_path_factory.mktemp("demo") / "demo.zip"
    return path, build_demo_export(path, limit_conversations=LIMIT)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path}/m.db")
    upgrade(engine)
    return Store(engine)


def read(path: Path, name: str) -> list[dict]:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read(name))


def handles(path: Path) -> dict[str, str]:
    return {u["id"]: u["name"] for u in read(path, "users.json")}


def test_same_seed_same_bytes_other_seed_other_layout(demo: tuple[Path, DemoStats],
                                                       tmp_path: Path) -> None:
    path, _ = demo
    assert build_demo_export(tmp_path / "again.zip",
                             limit_conversations=LIMIT).path.read_bytes() == path.read_bytes()
    other = build_demo_export(tmp_path / "other.zip", seed=1, limit_conversations=LIMIT)
    assert other.path.read_bytes() != path.read_bytes()
    assert handles(other.path) == handles(path), "handles depend on the sender, not the seed"


def test_users_have_unique_stable_readable_handles(demo: tuple[Path, DemoStats],
                                                  tmp_path: Path) -> None:
    path, stats = demo
    users = read(path, "users.json")
    people = [u for u in users if not u["is_bot"]]
    assert len(people) == stats.users and len(users) == stats.users + 1
    assert len({u["name"] for u in users}) == len(users)
    assert len({u["id"] for u in users}) == len(users)
    for user in people:
        assert re.fullmatch(r"U[0-9A-Z]{10}", user["id"])
        assert re.fullmatch(r"[a-z]+_[a-z]+\d*", user["name"])
        assert user["real_name"] and user["profile"]["display_name"]
    # A smaller build names the same people the same way.
    small = handles(build_demo_export(tmp_path / "small.zip", limit_conversations=20).path)
    full = handles(path)
    assert small and all(full[uid] == name for uid, name in small.items())


def test_layout_is_a_slack_export(demo: tuple[Path, DemoStats]) -> None:
    path, stats = demo
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert names[:4] == ["users.json", "channels.json", "groups.json",
                             "integration_logs.json"]
        assert json.loads(zf.read("integration_logs.json")) == []
        public = json.loads(zf.read("channels.json"))
        private = json.loads(zf.read("groups.json"))
        assert [c["name"] for c in private] == [stats.private_channel]
        assert {c["name"] for c in public} >= {"general", "random", "tech"}
        per_channel: Counter[str] = Counter()
        for name in names[4:]:
            channel, day = name.split("/")
            messages = json.loads(zf.read(name))
            per_channel[channel] += len(messages)
            stamps = [m["ts"] for m in messages]
            assert all(re.fullmatch(r"\d{10}\.\d{6}", ts) for ts in stamps)
            assert stamps == sorted(stamps), name
            assert {datetime.fromtimestamp(int(ts.split(".")[0]), UTC).strftime("%Y-%m-%d")
                    for ts in stamps} == {day[:-5]}
            for info in zf.infolist():
                assert info.date_time == demo_data.ZIP_DATE
    assert sum(per_channel.values()) == stats.messages + stats.joins + stats.bot_messages
    assert len(names) - 4 == stats.day_files
    # Uneven on purpose: the biggest channel is several times the smallest.
    assert max(per_channel.values()) > 3 * min(per_channel.values())


def test_import_keeps_people_and_drops_noise(demo: tuple[Path, DemoStats], store: Store) -> None:
    path, stats = demo
    assert stats.mentions and stats.links and stats.bot_messages and stats.joins

    summary = import_export(store, path)

    assert summary.kept == summary.new == stats.messages
    assert dict(summary.dropped) == {"bot": stats.bot_messages,
                                     "subtype channel_join": stats.joins}
    with store.session() as s:
        channels = {c.name: c for c in s.scalars(select(Channel))}
        users = {u.id: u for u in s.scalars(select(User))}
        messages = list(s.scalars(select(Message)))
    assert len(channels) == stats.channels
    assert [n for n, c in channels.items() if c.is_private] == [stats.private_channel]
    assert sum(u.is_bot for u in users.values()) == 1
    assert not any(u.deleted for u in users.values()), "every author is in users.json"

    mentioned = [m for m in messages if "<@" in m.text_raw]
    assert len(mentioned) == stats.mentions
    for m in mentioned:
        uid = re.search(r"<@(U[0-9A-Z]{10})", m.text_raw).group(1)  # type: ignore[union-attr]
        assert f"@{users[uid].name}" in m.text and "<@" not in m.text
    linked = [m for m in messages if "<https://" in m.text_raw]
    assert len(linked) == stats.links
    assert not any("<https://" in m.text for m in linked)

    # Without markup, the stored text is exactly what the person wrote.
    data = load_chitchat()
    originals = {m["text"] for cid in sorted(data)[:LIMIT]
                 for run in data[cid]["messages"] for m in run}
    plain = [m for m in messages if "<" not in m.text_raw]
    assert len(plain) == stats.messages - stats.mentions - stats.links
    assert all(m.text in originals for m in plain)
    assert any("&amp;" in m.text_raw or "&lt;" in m.text_raw or "&gt;" in m.text_raw
               for m in plain), "the sample should exercise entity escaping"

    again = import_export(store, path)
    assert again.kept == stats.messages and again.new == 0


def test_missing_dataset_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setattr(demo_data.importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(DemoDataError, match=re.escape("pip install -e '.[demo]'")):
        build_demo_export(tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()


def test_command_writes_the_zip(tmp_path: Path) -> None:
    out = tmp_path / "cli.zip"
    result = CliRunner().invoke(app, ["demo-data", str(out), "--limit", "10"])
    assert result.exit_code == 0, result.output
    assert zipfile.is_zipfile(out)
    assert "secret-plans" in result.output
