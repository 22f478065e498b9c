"""`mimic import` of a hand-built export, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, text

from mimic.core.store import (
    POOL_SIZE,
    Channel,
    Message,
    Run,
    SchemaError,
    Store,
    User,
    open_store,
)
from mimic.exporter.importer import BadExportError, import_export
from mimic.exporter.messages import normalise
from tests.slack_export import DROPPED, KEPT, msg, write_export, zip_folder


def snapshot(store: Store) -> dict[str, Any]:
    """Everything the import writes, comparable across runs (runs table excluded)."""
    with store.session() as s:
        return {
            "users": sorted((u.id, u.name, u.display_name, u.real_name, u.is_bot, u.deleted)
                            for u in s.scalars(select(User))),
            "channels": sorted((c.id, c.name, c.is_private, c.is_archived, c.is_dm)
                               for c in s.scalars(select(Channel))),
            "messages": sorted((m.channel_id, m.ts, m.user_id, m.text_raw, m.text, m.thread_ts,
                                m.subtype, m.edited_ts, m.deleted)
                               for m in s.scalars(select(Message))),
        }


def texts(store: Store) -> dict[str, str]:
    with store.session() as s:
        return {m.ts: m.text for m in s.scalars(select(Message))}


@pytest.mark.parametrize("form", ["folder", "zip", "zip-with-top-folder"])
def test_import_keeps_people_and_drops_the_rest(any_store: Store, tmp_path: Path,
                                                form: str) -> None:
    folder = write_export(tmp_path / "export")
    source = {"folder": lambda: folder,
              "zip": lambda: zip_folder(folder, tmp_path / "e.zip"),
              "zip-with-top-folder": lambda: zip_folder(folder, tmp_path / "e.zip", "Acme/"),
              }[form]()

    summary = import_export(any_store, source)

    assert summary.kept == KEPT and summary.new == KEPT
    assert dict(summary.dropped) == DROPPED
    assert summary.per_channel == {"general": 10, "random": 1, "secret": 1}
    snap = snapshot(any_store)
    assert ("G1", "secret", True, False, False) in snap["channels"]
    assert ("C2", "random", False, True, False) in snap["channels"]
    assert not any(c[0] == "D1" for c in snap["channels"]), "DMs need --include-dms"
    assert ("B9", "deploybot", "", "", True, False) in snap["users"]
    with any_store.session() as s:
        alice = s.get(User, "U1")
        assert alice is not None and (alice.display_name, alice.real_name) == (
            "ali", "Alice Archer")
        broadcast = s.scalars(select(Message).where(Message.ts == "1600000012.000100")).one()
        assert broadcast.subtype == "thread_broadcast"
        assert broadcast.thread_ts == "1600000010.000100"
        run = s.scalars(select(Run)).one()
        assert (run.kind, run.status, run.counts["kept"]) == ("import", "ok", KEPT)


def test_markup_is_normalised(any_store: Store, tmp_path: Path) -> None:
    import_export(any_store, write_export(tmp_path / "export"))
    got = texts(any_store)
    assert got["1600000000.000100"] == "hello @bob and @bob in #random and #general"
    assert got["1600000001.000100"] == "see the docs or https://example.com/x"
    assert got["1600000002.000100"] == "@here fish & chips <3 > all"
    assert got["1600000003.000100"] == "@eng ship it Sep 13"


@pytest.mark.parametrize(("raw", "plain"), [
    ("<@U1|bob>", "@alice"),          # the users map wins over a stale label
    ("<@U404|ghost>", "@ghost"),
    ("<@U404>", "@U404"),
    ("<#C9|ops>", "#ops"),
    ("<mailto:a@b.c|a@b.c>", "a@b.c"),
    ("<!channel> <!everyone>", "@channel @everyone"),
    ("<!subteam^S1>", "@team"),
    ("a &amp;amp; b", "a &amp; b"),    # unescaped once, as Slack escaped once
    ("no markup", "no markup"),
])
def test_normalise_table(raw: str, plain: str) -> None:
    assert normalise(raw, {"U1": "alice"}, {"C1": "general"}) == plain


def test_reimport_is_idempotent_and_a_larger_export_adds_only_the_new(
        any_store: Store, tmp_path: Path) -> None:
    folder = write_export(tmp_path / "export")
    import_export(any_store, folder)
    first = snapshot(any_store)

    again = import_export(any_store, zip_folder(folder, tmp_path / "e.zip"))
    assert again.new == 0 and snapshot(any_store) == first

    edited = msg("1600090000.000100", "a new day, edited", user="U2",
                 edited={"user": "U2", "ts": "1600090500.000000"})
    bigger = write_export(tmp_path / "bigger", extra_days={
        "general/2020-09-14": [edited],
        "general/2020-09-15": [msg("1600200000.000100", "later still")],
    })
    summary = import_export(any_store, bigger)
    assert summary.new == 2  # the edited one and the new one
    got = texts(any_store)
    assert got["1600090000.000100"] == "a new day, edited"
    assert got["1600200000.000100"] == "later still"
    assert len(got) == KEPT + 1


def test_include_dms_stores_them_apart(any_store: Store, tmp_path: Path) -> None:
    summary = import_export(any_store, write_export(tmp_path / "export"), include_dms=True)
    assert summary.kept == KEPT + 1
    with any_store.session() as s:
        dm = s.get(Channel, "D1")
        assert dm is not None and dm.is_dm and dm.is_private


def test_allowlist_skips_other_channels(any_store: Store, tmp_path: Path) -> None:
    summary = import_export(any_store, write_export(tmp_path / "export"),
                            allow=lambda name: name == "random")
    assert summary.per_channel == {"random": 1}
    # general (10 kept + the broadcast seen twice) and secret (1)
    assert summary.dropped["channel not in MIMIC_CHANNELS"] == 12


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("general/2020-09-14.json", '[{"type": "message", "user": "U1", "text": "cut of',
     "general/2020-09-14.json: not valid JSON"),
    ("general/2020-09-14.json", json.dumps([{"type": "message", "user": "U1", "text": "x"}]),
     "general/2020-09-14.json: entry 0 has no valid ts"),
    ("random/2020-09-13.json", json.dumps({"not": "a list"}),
     "random/2020-09-13.json: expected a JSON list"),
    ("users.json", json.dumps([{"name": "nobody"}]), "users.json: entry 0 has no id"),
])
def test_corrupt_file_aborts_and_leaves_the_store_untouched(
        any_store: Store, tmp_path: Path, name: str, content: str, expected: str) -> None:
    import_export(any_store, write_export(tmp_path / "first"))
    before = snapshot(any_store)
    bad = write_export(tmp_path / "bad", extra_days={
        "general/2020-09-20": [msg("1600600000.000100", "would be new")]})
    (bad / name).write_text(content)

    with pytest.raises(BadExportError, match=expected.replace(".", r"\.")):
        import_export(any_store, bad)
    assert snapshot(any_store) == before


def test_truncated_zip_is_refused(any_store: Store, tmp_path: Path) -> None:
    good = zip_folder(write_export(tmp_path / "export"), tmp_path / "e.zip")
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(BadExportError, match="cut.zip"):
        import_export(any_store, cut)
    assert snapshot(any_store)["messages"] == []


def test_not_an_export(any_store: Store, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadExportError, match="no channels.json"):
        import_export(any_store, tmp_path / "empty")
    with pytest.raises(BadExportError, match="does not exist"):
        import_export(any_store, tmp_path / "missing.zip")


def test_store_refuses_a_database_behind_the_code(database_url: str) -> None:
    with pytest.raises(SchemaError, match="mimic init"):
        open_store(database_url)


def test_a_burst_of_sessions_finds_its_connections_open_again(postgres_store: Store) -> None:
    """Concurrent commands check out a connection each. A pool that closed the extras as they
    came back made every burst connect afresh: half a new PostgreSQL connection (a server
    process) a /mimic request, once the pool's 5 were busy (bench/replicas.py)."""
    store = postgres_store
    opened: list[object] = []
    event.listen(store.engine, "connect", lambda connection, _record: opened.append(connection))
    together = threading.Barrier(POOL_SIZE)

    def hold() -> None:
        with store.session() as session:
            session.execute(text("SELECT 1"))
            together.wait(timeout=30)  # every session holds its connection at once

    for burst in range(2):
        threads = [threading.Thread(target=hold) for _ in range(POOL_SIZE)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if burst == 0:
            first = len(opened)
            assert 0 < first <= POOL_SIZE
    assert not together.broken
    assert len(opened) == first, "the second burst opened connections again"


def mimic_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Wide: rich wraps at 80 columns, and a message holding a temporary path could break
    # inside the words asserted on (it did in a worker with a longer path).
    return subprocess.run([sys.executable, "-m", "mimic.cli", *args], cwd=cwd, text=True,
                          capture_output=True, env={**os.environ, "COLUMNS": "200", **env},
                          timeout=120)


def test_cli_init_then_import_prints_a_summary(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/m.db", "SLACK_BOT_TOKEN": "xoxb-secret-1"}
    export = zip_folder(write_export(tmp_path / "export"), tmp_path / "e.zip")

    refused = mimic_cli("import", str(export), cwd=tmp_path, env=env)
    assert refused.returncode == 1 and "mimic init" in refused.stderr
    assert "Traceback" not in refused.stderr

    assert mimic_cli("init", cwd=tmp_path, env=env).returncode == 0
    done = mimic_cli("import", str(export), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "#general" in done.stdout and f"{KEPT} new or edited messages" in done.stdout
    assert "channel_join" in done.stdout

    broken = tmp_path / "broken.zip"
    broken.write_text("not a zip")
    failed = mimic_cli("import", str(broken), cwd=tmp_path, env=env)
    assert failed.returncode == 1 and "neither a ZIP" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert "xoxb-secret-1" not in failed.stderr + done.stdout


def test_settings_hide_secrets_and_split_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    from mimic.core.config import Settings

    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-very-secret")
    monkeypatch.setenv("MIMIC_ADMINS", "U1, U2")
    monkeypatch.setenv("MIMIC_CHANNELS", "#General,random")
    monkeypatch.setenv("SLACK_API_URL", "http://127.0.0.1:9/api")
    settings = Settings(_env_file=None)
    assert "xoxb-very-secret" not in repr(settings) + str(settings)
    assert settings.admins == ["U1", "U2"]
    assert settings.channel_allowed("general") and not settings.channel_allowed("music")
    assert settings.slack_api_url == "http://127.0.0.1:9/api/"
    assert settings.database_url == "sqlite:///data/mimic.db"
