"""Hostile and broken export ZIPs and folders: each is refused with the file and entry named
(or, for what Slack itself never sends, dropped and counted), and the store is unchanged."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from mimic.core.store import Store
from mimic.exporter import importer
from mimic.exporter.importer import BadExportError, import_export
from tests.hostile.store_bytes import fingerprint
from tests.slack_export import CHANNELS, USERS, msg, write_export, zip_folder

DAY = "general/2020-09-20.json"


@pytest.fixture
def imported(store: Store, tmp_path: Path) -> Store:
    """A store that already holds the hand-built export: a refusal must not touch it."""
    import_export(store, write_export(tmp_path / "first"))
    return store


def export_with(tmp_path: Path, day: list[Any] | str, **files: Any) -> Path:
    """The hand-built export plus one more day file (and files replaced by `files`)."""
    folder = write_export(tmp_path / "bad", extra_days={DAY[:-5]: []})
    (folder / DAY).write_text(day if isinstance(day, str) else json.dumps(day))
    for name, content in files.items():
        path = folder / name.replace("__", "/")
        if content is None:
            path.unlink()
        else:
            path.write_text(content if isinstance(content, str) else json.dumps(content))
    return folder


def refused(store: Store, source: Path, expected: str) -> BadExportError:
    before = fingerprint(store)
    with pytest.raises(BadExportError) as info:
        import_export(store, source)
    assert expected in str(info.value)
    assert fingerprint(store) == before
    return info.value


@pytest.mark.parametrize(("message", "expected"), [
    (msg("1600600000.000100", "hi", user={"id": "U1"}),  # type: ignore[arg-type]
     f"{DAY}: entry 0 has a user that is not a Slack user id (dict)"),
    (msg("1600600000.000100", "hi", user=["U1"]),  # type: ignore[arg-type]
     f"{DAY}: entry 0 has a user that is not a Slack user id (list)"),
    (msg("1600600000.000100", "hi", user="U1/../../../victim"),
     "entry 0 has a user that is not a Slack user id ('U1/../../../victim')"),
    (msg("1600600000.000100", ["not", "text"]),  # type: ignore[arg-type]
     f"{DAY}: entry 0 has a text that is list, not a string"),
    (msg("1600600000.000100", "edited", edited={"user": "U1", "ts": "yesterday"}),
     f"{DAY}: entry 0 has an invalid edited.ts"),
    (msg("1600600000.000100", "thread", thread_ts={"ts": 1}),
     f"{DAY}: entry 0 has an invalid thread_ts"),
    (msg("1600600000.000100", "hi", subtype=["bot_message"]),
     f"{DAY}: entry 0 has a subtype that is list, not text"),
])
def test_a_malformed_message_is_refused_by_file_and_entry(
        imported: Store, tmp_path: Path, message: dict[str, Any], expected: str) -> None:
    refused(imported, export_with(tmp_path, [message]), expected)


def test_a_lone_surrogate_is_refused_not_a_traceback(imported: Store, tmp_path: Path) -> None:
    day = '[{"type": "message", "user": "U1", "ts": "1600600000.000100", "text": "a\\ud800b"}]'
    refused(imported, export_with(tmp_path, day), f"{DAY}: entry 0 has a text that has invalid "
            "Unicode (surrogates not allowed at character 1)")
    users = json.dumps([*USERS, {"id": "U7", "name": "eve\ud800"}])
    refused(imported, export_with(tmp_path, [], **{"users.json": users}),
            "users.json: entry 5 has a name that has invalid Unicode")


@pytest.mark.parametrize(("name", "entry", "expected"), [
    ("users.json", {"id": "U1/../../../victim", "name": "mallory"},
     "users.json: entry 5 has an id, 'U1/../../../victim', that is not a Slack id"),
    ("users.json", {"id": "u7", "name": "lower"}, "users.json: entry 5 has an id, 'u7'"),
    ("users.json", {"id": "U7", "name": {"first": "x"}}, "users.json: entry 5 has a name that "
     "is dict, not text"),
    ("channels.json", {"id": "C9/../../models", "name": "evil"},
     "channels.json: entry 2 has an id, 'C9/../../models', that is not a Slack id"),
])
def test_ids_that_are_not_slack_shaped_are_refused(imported: Store, tmp_path: Path, name: str,
                                                   entry: dict[str, Any], expected: str) -> None:
    listed = {"users.json": USERS, "channels.json": CHANNELS}[name]
    refused(imported, export_with(tmp_path, [], **{name: [*listed, entry]}), expected)


def test_a_missing_users_json_says_so(imported: Store, tmp_path: Path) -> None:
    refused(imported, export_with(tmp_path, [], **{"users.json": None}),
            "has no users.json (nor org_users.json")


def _patch(zip_path: Path, member: str, local: dict[int, bytes], central: dict[int, bytes],
           data: dict[int, bytes] | None = None) -> None:
    """Overwrite bytes of one member's local header, central directory entry and data."""
    raw = bytearray(zip_path.read_bytes())
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo(member)
    start = info.header_offset
    for offset, value in local.items():
        raw[start + offset:start + offset + len(value)] = value
    name_len, extra_len = struct.unpack("<HH", raw[start + 26:start + 30])
    body = start + 30 + name_len + extra_len
    for offset, value in (data or {}).items():
        raw[body + offset:body + offset + len(value)] = value
    entry = raw.index(b"PK\x01\x02")  # the central directory: find the member's entry
    while raw[entry + 46:entry + 46 + len(member)] != member.encode():
        entry = raw.index(b"PK\x01\x02", entry + 4)
    for offset, value in central.items():
        raw[entry + offset:entry + offset + len(value)] = value
    zip_path.write_bytes(bytes(raw))


def zipped(tmp_path: Path, day: list[Any] | str) -> Path:
    return zip_folder(export_with(tmp_path, day), tmp_path / "export.zip")


def test_corrupt_deflate_data_is_refused(imported: Store, tmp_path: Path) -> None:
    day = [msg(f"16006{i:05d}.000100", f"message number {i} " * 5) for i in range(200)]
    path = zipped(tmp_path, day)
    _patch(path, DAY, {}, {}, data={40: b"\xff\x00\xff\x00\xff\x00\xff\x00"})
    refused(imported, path, f"{DAY}: cannot be read (")


def test_an_encrypted_member_is_refused(imported: Store, tmp_path: Path) -> None:
    path = zipped(tmp_path, [msg("1600600000.000100", "secret")])
    _patch(path, DAY, {6: b"\x01\x00"}, {8: b"\x01\x00"})  # general purpose flag: encrypted
    error = refused(imported, path, f"{DAY}: cannot be read (")
    assert "unencrypted" in str(error)


def test_deflate64_is_refused(imported: Store, tmp_path: Path) -> None:
    path = zipped(tmp_path, [msg("1600600000.000100", "odd packer")])
    _patch(path, DAY, {8: b"\x09\x00"}, {10: b"\x09\x00"})  # compression method 9
    error = refused(imported, path, f"{DAY}: cannot be read (")
    assert "standard (deflate) ZIP" in str(error)


def test_a_decompression_bomb_is_refused_before_it_is_inflated(imported: Store,
                                                               tmp_path: Path) -> None:
    path = zipped(tmp_path, "[" + " " * 20_000_000 + "]")  # 20 MB of spaces: ~20 KB packed
    refused(imported, path, f"{DAY}: ")
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo(DAY).compress_size < 100_000


def test_a_file_over_the_size_limit_is_refused(imported: Store, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importer, "MAX_FILE_BYTES", 2**20)
    day = json.dumps([msg(f"1600600{i:03d}.000100", os.urandom(600).hex()) for i in range(1000)])
    for source in (export_with(tmp_path, day), zipped(tmp_path, day)):
        error = refused(imported, source, f"{DAY}: ")
        assert "more than mimic reads from one file (1 MB)" in str(error)


def test_messages_longer_than_slack_allows_are_dropped_and_counted(store: Store,
                                                                   tmp_path: Path) -> None:
    long = msg("1600600000.000100", "x" * 40_001)
    summary = import_export(store, export_with(tmp_path, [long, msg("1600600001.000100", "ok")]))
    assert summary.dropped["longer than Slack allows"] == 1
    assert summary.per_channel["general"] == 11  # the 10 of the hand-built export + "ok"


def test_a_failed_write_leaves_schema_and_rows_as_they_were(imported: Store,
                                                            tmp_path: Path) -> None:
    """A failure while writing (here a trigger standing in for a full disk) rolls back every
    part of the import: rows, and the index the bulk write drops and rebuilds."""
    with imported.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER simulated_full_disk BEFORE INSERT ON messages "
            "WHEN NEW.text_raw = 'boom' BEGIN SELECT RAISE(ABORT, 'database or disk is full'); "
            "END")
    before = fingerprint(imported)
    day = [msg("1600600000.000100", "fine"), msg("1600600001.000100", "boom")]
    with pytest.raises(Exception, match="disk is full"):
        import_export(imported, export_with(tmp_path, day))
    after = fingerprint(imported)
    assert any("ix_messages_user_ts" in line for line in after[1])
    assert after == before


def test_the_cli_shows_no_traceback(store: Store, tmp_path: Path) -> None:
    path = zipped(tmp_path, "[" + " " * 20_000_000 + "]")
    env = {**os.environ, "DATABASE_URL": str(store.engine.url), "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "mimic.cli", "import", str(path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "decompression bomb" in done.stderr and "Nothing was written" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
