"""A small hand-built Slack export with every drop rule and markup form, as a folder or ZIP."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

USERS = [
    {"id": "U1", "name": "alice", "real_name": "Alice Archer",
     "profile": {"display_name": "ali", "real_name": "Alice Archer"}},
    {"id": "U2", "name": "bob", "real_name": "Bob Baker", "profile": {"display_name": ""}},
    {"id": "W3", "name": "carol", "deleted": True, "profile": {"real_name": "Carol C"}},
    {"id": "B9", "name": "deploybot", "is_bot": True, "profile": {}},
    {"id": "USLACKBOT", "name": "slackbot", "profile": {}},
]
CHANNELS = [{"id": "C1", "name": "general"}, {"id": "C2", "name": "random", "is_archived": True}]
GROUPS = [{"id": "G1", "name": "secret", "is_private": True}]
DMS = [{"id": "D1", "members": ["U1", "U2"]}]


def msg(ts: str, text: str, user: str = "U1", **extra: Any) -> dict[str, Any]:
    return {"type": "message", "user": user, "text": text, "ts": ts, **extra}


GENERAL_DAY1 = [
    msg("1600000000.000100", "hello <@U2|bob> and <@U2> in <#C2|random> and <#C1>"),
    msg("1600000001.000100", "see <https://example.com|the docs> or <https://example.com/x>"),
    msg("1600000002.000100", "<!here> fish &amp; chips &lt;3 &gt; all", user="U2"),
    msg("1600000003.000100", "<!subteam^S1|@eng> ship it <!date^1600000000^{date}|Sep 13>"),
    msg("1600000004.000100", "alice has joined the channel", subtype="channel_join"),
    msg("1600000005.000100", "deployed v1", user="B9"),
    msg("1600000006.000100", "build green", subtype="bot_message", bot_id="B123",
        username="ci"),
    msg("1600000007.000100", "reminder", user="USLACKBOT"),
    msg("1600000008.000100", "set the topic", subtype="channel_topic"),
    msg("1600000009.000100", "", user="U2"),
    msg("1600000010.000100", "thread parent", thread_ts="1600000010.000100", reply_count=2),
    msg("1600000011.000100", "a reply", user="U2", thread_ts="1600000010.000100",
        parent_user_id="U1"),
    msg("1600000012.000100", "a broadcast reply", user="W3", subtype="thread_broadcast",
        thread_ts="1600000010.000100"),
    msg("1600000013.000100", "shared a file", subtype="file_share", files=[{"id": "F1"}]),
    msg("1600000014.000100", "waves", subtype="me_message"),
    msg("1600000015.000100", "pinned", subtype="pinned_item"),
]
GENERAL_DAY2 = [
    msg("1600090000.000100", "a new day", user="U2"),
    # The same broadcast again, as some exports carry it in the thread too: stored once.
    msg("1600000012.000100", "a broadcast reply", user="W3", subtype="thread_broadcast",
        thread_ts="1600000010.000100"),
]
RANDOM_DAY = [msg("1600000100.000100", "random thoughts", user="U2")]
SECRET_DAY = [msg("1600000200.000100", "private canary zebra-42")]
DM_DAY = [msg("1600000300.000100", "just between us")]

KEPT = 12  # what the importer should keep from the files above (DMs excluded)
DROPPED = {"subtype channel_join": 1, "bot": 3, "subtype channel_topic": 1, "empty": 1,
           "subtype pinned_item": 1}


def write_export(root: Path, extra_days: dict[str, list[dict[str, Any]]] | None = None) -> Path:
    """Write the export folder under `root`; `extra_days` maps 'channel/date' to messages."""
    files: dict[str, Any] = {
        "users.json": USERS,
        "channels.json": CHANNELS,
        "groups.json": GROUPS,
        "dms.json": DMS,
        "integration_logs.json": [],
        "canvases.json": [{"id": "X1"}],
        "general/2020-09-13.json": GENERAL_DAY1,
        "general/2020-09-14.json": GENERAL_DAY2,
        "random/2020-09-13.json": RANDOM_DAY,
        "secret/2020-09-13.json": SECRET_DAY,
        "D1/2020-09-13.json": DM_DAY,
        "general/notes.txt": "not a day file",
    }
    for key, messages in (extra_days or {}).items():
        files[f"{key}.json"] = messages
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return root


def zip_folder(folder: Path, out: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
    return out
