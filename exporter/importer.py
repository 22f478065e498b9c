"""`mimic import`: Slack's official workspace export (ZIP or folder) into the store.

The whole export is read and checked before anything is written, then written in one
transaction: a corrupt file aborts with its name and entry, and the store stays as it was.
"""

from __future__ import annotations

import json
import re
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from rich.console import Console
from rich.progress import Progress

from mimic.core.store import Run, Store, utcnow
from mimic.exporter.messages import (
    BadEntry,
    channel_row,
    drop_reason,
    malformed,
    message_row,
    user_row,
)

DAY_FILE = re.compile(r"^\d{4}-\d{2}-\d{2}\.json$")
# Limits checked from the ZIP's directory before a file is read (README, "Commands"). Slack's
# own day files are a few MB at most; users.json of a 100,000-person org is about 150 MB.
MAX_FILE_BYTES = 256 * 2**20
# JSON compresses about 10:1; a file that claims far more is a decompression bomb.
MAX_RATIO, RATIO_FROM_BYTES = 100, 2**20


class BadExportError(Exception):
    """The export cannot be imported; the message names the file and entry."""


@dataclass
class ImportSummary:
    kept: int = 0
    new: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    per_channel: Counter[str] = field(default_factory=Counter)
    files: int = 0

    def title(self, path: Path) -> str:
        return f"Imported {path.name}: {self.files:,} day files"


class _Source:
    """Uniform reading of a ZIP or a folder; `root` is where users.json/channels.json live."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_dir():
            self._zip = None
            names = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
        elif zipfile.is_zipfile(path):
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                raise BadExportError(f"{path}: the ZIP's directory cannot be read ({exc}). "
                                     "Download the export again.") from None
            names = [n for n in self._zip.namelist() if not n.endswith("/")]
        elif path.exists():
            raise BadExportError(f"{path} is neither a ZIP file nor a folder. Pass the export "
                                 "ZIP that Slack's 'Export data' page gives you, or its folder.")
        else:
            raise BadExportError(f"{path} does not exist.")
        roots = sorted((PurePosixPath(n).parent for n in names
                        if PurePosixPath(n).name == "channels.json"), key=lambda p: len(p.parts))
        if not roots:
            raise BadExportError(f"{path} has no channels.json: it is not a Slack workspace "
                                 "export. Export from Slack's admin page (Settings → Import/"
                                 "Export Data) and pass the ZIP.")
        self.root = roots[0]
        prefix = "" if str(self.root) == "." else f"{self.root}/"
        self.names = {n[len(prefix):] for n in names if n.startswith(prefix)}

    def _check_size(self, name: str, full: str) -> None:
        """Refuse a file too big to hold, or packed like a bomb, before reading a byte of it.
        (zipfile never inflates past the size the directory declares.)"""
        if self._zip is not None:
            info = self._zip.getinfo(full)
            size, packed = info.file_size, info.compress_size
        else:
            size = packed = (self.path / full).stat().st_size
        if size > MAX_FILE_BYTES:
            raise BadExportError(f"{name}: {size / 2**20:,.0f} MB unpacked, more than mimic "
                                 f"reads from one file ({MAX_FILE_BYTES // 2**20} MB). A real "
                                 "Slack export never has such a file: check where it came from.")
        if size > RATIO_FROM_BYTES and size > MAX_RATIO * packed:
            raise BadExportError(f"{name}: {packed:,} bytes that unpack to {size:,} (more than "
                                 f"{MAX_RATIO}:1). That is a decompression bomb, not a Slack "
                                 "export: check where it came from.")

    def read_json(self, name: str) -> Any:
        full = name if str(self.root) == "." else f"{self.root}/{name}"
        try:
            self._check_size(name, full)
            data = (self._zip.read(full) if self._zip is not None
                    else (self.path / full).read_bytes())
            return json.loads(data)
        except RecursionError:
            raise BadExportError(f"{name}: nested too deeply to be a Slack export.") from None
        except NotImplementedError as exc:  # deflate64, bzip2 from odd tools, ...
            raise BadExportError(f"{name}: cannot be read ({exc}). Re-pack the export as a "
                                 "standard (deflate) ZIP, or import the unpacked folder.") from None
        except RuntimeError as exc:  # zipfile's word for an encrypted member (after its
            # subclasses NotImplementedError and RecursionError, caught above)
            raise BadExportError(f"{name}: cannot be read ({exc}). mimic reads unencrypted "
                                 "exports: unpack it with its password and import the "
                                 "folder.") from None
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
            if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
                raise BadExportError(f"{name}: not valid JSON ({exc}). The file is corrupt "
                                     "or truncated: download the export again.") from None
            raise BadExportError(f"{name}: cannot be read ({exc}). The export may be "
                                 "truncated or corrupt: download it again.") from None

    def list_of_objects(self, name: str) -> list[dict[str, Any]]:
        data = self.read_json(name)
        if not isinstance(data, list):
            raise BadExportError(f"{name}: expected a JSON list, found {type(data).__name__}.")
        for index, entry in enumerate(data):
            if not isinstance(entry, dict):
                raise BadExportError(f"{name}: entry {index} is {type(entry).__name__}, "
                                     "not an object.")
        return data

    def day_files(self, folder: str) -> list[str]:
        return sorted(n for n in self.names
                      if n.startswith(folder + "/") and DAY_FILE.match(n[len(folder) + 1:]))

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _rows(src: _Source, name: str, make: Callable[[dict[str, Any]], dict[str, Any]]
          ) -> list[dict[str, Any]]:
    rows = []
    for index, entry in enumerate(src.list_of_objects(name)):
        try:
            rows.append(make(entry))
        except BadEntry as exc:
            raise BadExportError(f"{name}: entry {index} {exc}.") from None
    return rows


def _conversations(src: _Source, include_dms: bool) -> Iterator[tuple[dict[str, Any], str]]:
    """(channel row, folder name) for every conversation the import takes."""
    lists = [("channels.json", False, False), ("groups.json", True, False)]
    if include_dms:
        lists += [("dms.json", True, True), ("mpims.json", True, True)]
    for name, private, dm in lists:
        if name not in src.names:
            continue
        for row in _rows(src, name, lambda e, p=private, d=dm: channel_row(e, private=p, dm=d)):
            # Public/private channel folders are named by channel name, DM folders by id.
            yield row, (row["id"] if dm else row["name"])


def _users(src: _Source) -> list[dict[str, Any]]:
    files = [name for name in ("users.json", "org_users.json") if name in src.names]
    if not files:
        raise BadExportError(f"{src.path} has no users.json (nor org_users.json, as Enterprise "
                             "Grid names it): without it people would be known only by their "
                             "ids. Export again from Slack's admin page and pass the whole "
                             "ZIP.")
    return [row for name in files for row in _rows(src, name, user_row)]


def import_export(
    store: Store,
    path: Path,
    *,
    include_dms: bool = False,
    allow: Callable[[str], bool] = lambda _name: True,
    progress: Console | None = None,
) -> ImportSummary:
    """Read the export at `path` and store the people's messages in one transaction."""
    src = _Source(Path(path))
    try:
        return _import(store, src, include_dms, allow, progress)
    finally:
        src.close()


@dataclass
class _Context:
    """What reading a day file needs to know about the workspace."""

    bots: frozenset[str]
    users: dict[str, str]  # id → handle
    channels: dict[str, str]  # id → name


def _read_day(src: _Source, ctx: _Context, name: str, channel_id: str,
              allowed: bool) -> tuple[list[dict[str, Any]], Counter[str]]:
    rows, dropped = [], Counter[str]()
    for index, message in enumerate(src.list_of_objects(name)):
        if problem := malformed(message):
            raise BadExportError(f"{name}: entry {index} {problem}.")
        reason = drop_reason(message, ctx.bots)
        if reason is None and not allowed:
            reason = "channel not in MIMIC_CHANNELS"
        if reason is None:
            rows.append(message_row(message, channel_id, ctx.users, ctx.channels))
        else:
            dropped[reason] += 1
    return rows, dropped


def _import(store: Store, src: _Source, include_dms: bool, allow: Callable[[str], bool],
            progress: Console | None) -> ImportSummary:
    summary = ImportSummary()
    users = _users(src)
    conversations = list(_conversations(src, include_dms))
    ctx = _Context(frozenset(u["id"] for u in users if u["is_bot"]),
                   {u["id"]: u["name"] for u in users},
                   {row["id"]: row["name"] for row, _ in conversations})
    jobs = [(name, row["id"], allow(row["name"]))
            for row, folder in conversations for name in src.day_files(folder)]
    rows: list[dict[str, Any]] = []
    with Progress(console=progress, disable=progress is None or len(jobs) < 200,
                  transient=True) as bar:
        for job in bar.track(jobs, description="reading export"):
            kept, dropped = _read_day(src, ctx, *job)
            rows += kept
            summary.dropped.update(dropped)

    with store.session() as session, store.deferred_indexes(session):
        # Someone who opted out stays forgotten: a re-import never brings their words back.
        opted_out = store.opted_out_ids(session)
        if opted_out:
            before = len(rows)
            rows = [r for r in rows if r["user_id"] not in opted_out]
            if len(rows) < before:
                summary.dropped["opted out of mimic"] += before - len(rows)
        # A thread_broadcast can appear both in the channel and in its thread: one (channel, ts).
        keys = {(r["channel_id"], r["ts"]) for r in rows}
        summary.files, summary.kept = len(jobs), len(keys)
        summary.per_channel = Counter(ctx.channels[c] for c, _ in keys)
        store.upsert_users(session, users)
        store.ensure_users(session, {r["user_id"] for r in rows} - ctx.users.keys())
        store.upsert_channels(session, [row for row, _ in conversations])
        summary.new = store.upsert_messages(session, rows)
        session.add(Run(kind="import", source=str(src.path), finished_at=utcnow(),
                        status="ok", counts={"kept": summary.kept, "new": summary.new,
                                             "files": summary.files,
                                             "dropped": dict(summary.dropped)}))
    return summary
