"""`mimic export`: the real slack_sdk WebClient against the fake Slack in tests/fake_slack.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from mimic.core.config import Settings
from mimic.core.store import Channel, Message, Run, Store, Watermark
from mimic.exporter.webapi import ExportSummary, SlackExportError, export_workspace
from tests.fake_slack import TOKEN, FakeSlack

ROOT = Path(__file__).resolve().parent.parent


def settings(fake: FakeSlack, **extra: Any) -> Settings:
    values: dict[str, Any] = {"slack_bot_token": TOKEN, "slack_api_url": fake.url} | extra
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def build(fake: FakeSlack, general: int = 8) -> None:
    """A workspace with every case the exporter must handle."""
    fake.add_user("U1", "alice")
    fake.add_user("U2", "bob")
    fake.add_user("B1", "deploybot", is_bot=True)
    fake.add_channel("C1", "general")
    fake.add_channel("C2", "random")
    fake.add_channel("G1", "secret", private=True)
    fake.add_channel("C3", "lobby", member=False)
    fake.add_channel("G2", "hidden", private=True, member=False)
    fake.add_channel("C4", "attic", archived=True)
    for i in range(general):
        fake.post("C1", f"general {i} for <@U2>", "U1" if i % 2 else "U2")
    fake.post("C1", "<@U2> has joined the channel", "U2", subtype="channel_join")
    fake.post("C1", "deployed v1", "B1", bot_id="BB1")
    parent = fake.post("C1", "thread start", "U1")
    for i in range(4):  # more than a page of replies
        fake.post("C1", f"reply {i}", "U2", thread_ts=parent)
    fake.post("C1", "last word", "U2")
    for i in range(4):
        fake.post("C2", f"random {i} &amp; more", "U1")
    for i in range(3):
        fake.post("G1", f"secret {i}", "U2")
    for i in range(2):
        fake.post("C3", f"lobby {i}", "U1")
        fake.post("G2", f"hidden {i}", "U1")
        fake.post("C4", f"attic {i}", "U1")


def people(fake: FakeSlack, *channels: str) -> set[tuple[str, str]]:
    """What the store must hold for these channels: every message that is not bot or system."""
    return {(cid, m["ts"]) for cid in channels for m in fake.messages[cid].values()
            if "subtype" not in m and "bot_id" not in m}


def stored(store: Store) -> set[tuple[str, str]]:
    with store.session() as s:
        rows = s.execute(select(Message.channel_id, Message.ts)).all()
    assert len(rows) == len(set(rows))  # no duplicates
    return {(c, ts) for c, ts in rows}


def export(store: Store, fake: FakeSlack, **kwargs: Any) -> ExportSummary:
    extra = kwargs.pop("settings", {})
    return export_workspace(store, settings(fake, **extra), **kwargs)


def test_full_export(store: Store, fake_slack: FakeSlack) -> None:
    build(fake_slack)
    summary = export(store, fake_slack)
    assert stored(store) == people(fake_slack, "C1", "C2", "G1")
    assert summary.kept == summary.new == 8 + 1 + 4 + 1 + 4 + 3
    assert summary.dropped == {"subtype channel_join": 1, "bot": 1}
    assert sorted(summary.channels) == ["general", "random", "secret"]
    assert summary.not_member == ["lobby"]
    assert summary.per_channel == {"general": 14, "random": 4, "secret": 3}
    with store.session() as s:
        channels = {c.name: c for c in s.scalars(select(Channel))}
        assert channels["secret"].is_private and not channels["general"].is_private
        assert "hidden" not in channels and "attic" not in channels
        texts = dict(s.execute(select(Message.text_raw, Message.text)).all())
        assert texts["general 0 for <@U2>"] == "general 0 for @bob"
        assert texts["random 0 &amp; more"] == "random 0 & more"
        marks = {w.channel_id: w for w in s.scalars(select(Watermark))}
        assert marks["C1"].done_ts == max(fake_slack.messages["C1"], key=Decimal)
        assert marks["C1"].pending_high is None and marks["C1"].pending_low is None
        run = s.scalars(select(Run)).one()
        assert (run.kind, run.status, run.counts["kept"]) == ("export", "ok", 21)


def test_include_archived(store: Store, fake_slack: FakeSlack) -> None:
    build(fake_slack)
    summary = export(store, fake_slack, include_archived=True)
    assert stored(store) == people(fake_slack, "C1", "C2", "G1", "C4")
    assert "attic" in summary.channels


def test_threads_stored_with_thread_ts(store: Store, fake_slack: FakeSlack) -> None:
    build(fake_slack)
    export(store, fake_slack)
    parent = next(ts for ts, m in fake_slack.messages["C1"].items() if m["text"] == "thread start")
    with store.session() as s:
        thread = s.execute(select(Message.text, Message.thread_ts)
                           .where(Message.thread_ts == parent).order_by(Message.ts)).all()
    assert [t for t, _ in thread] == ["thread start"] + [f"reply {i}" for i in range(4)]
    assert fake_slack.calls["conversations.replies"] == 2  # 5 messages in pages of 3


def test_incremental_fetches_only_new(store: Store, fake_slack: FakeSlack) -> None:
    build(fake_slack)
    export(store, fake_slack)
    before = fake_slack.calls["conversations.history"]
    parent = fake_slack.post("C1", "new thread", "U1")
    fake_slack.post("C1", "new reply", "U2", thread_ts=parent)
    fake_slack.post("G1", "new secret", "U1")
    summary = export(store, fake_slack)
    assert (summary.kept, summary.new) == (3, 3)
    assert fake_slack.calls["conversations.history"] - before == 3  # one short page a channel
    assert stored(store) == people(fake_slack, "C1", "C2", "G1")
    again = export(store, fake_slack)
    assert (again.kept, again.new) == (0, 0)


def test_full_picks_up_old_edits(store: Store, fake_slack: FakeSlack) -> None:
    build(fake_slack)
    export(store, fake_slack)
    old = next(ts for ts, m in fake_slack.messages["C2"].items()
               if m["text"].startswith("random 0"))
    fake_slack.edit("C2", old, "random 0 edited")
    assert export(store, fake_slack).new == 0  # incremental does not look back
    summary = export(store, fake_slack, full=True)
    assert summary.new == 1 and summary.kept == 21
    with store.session() as s:
        row = s.scalars(select(Message).where(Message.ts == old)).one()
        assert row.text == "random 0 edited" and row.edited_ts is not None
    assert stored(store) == people(fake_slack, "C1", "C2", "G1")


def test_deletions_in_slack_are_noticed_within_the_recheck_window(
        store: Store, fake_slack: FakeSlack) -> None:
    build(fake_slack)  # messages of 2023: long before the recheck window
    now = int(time.time())
    recent = [fake_slack.post("C1", f"recent {i}", "U1", ts=f"{now - 86_400 * (2 + i)}.000100")
              for i in range(3)]
    parent = fake_slack.post("C1", "recent thread", "U2", ts=f"{now - 3600}.000100")
    answers = [fake_slack.post("C1", f"answer {i}", "U1", thread_ts=parent,
                               ts=f"{now - 3000 + i}.000100") for i in range(2)]
    export(store, fake_slack)
    old = next(ts for ts, m in fake_slack.messages["C1"].items() if m["text"] == "last word")
    for ts in (recent[1], answers[0], parent, old):
        fake_slack.delete("C1", ts)  # the parent keeps a reply: it becomes a tombstone

    summary = export(store, fake_slack)
    with store.session() as s:
        deleted = set(s.scalars(select(Message.ts).where(Message.deleted)))
    assert deleted == {recent[1], answers[0], parent} and summary.deleted == 3
    # The old one is missing from history too, but that may be a free plan's 90-day limit.
    assert old not in deleted
    again = export(store, fake_slack)
    assert again.deleted == 0 and again.new == 0


def test_a_channel_emptied_in_slack_within_the_window(store: Store, fake_slack: FakeSlack) -> None:
    fake_slack.add_user("U1", "alice")
    fake_slack.add_channel("C1", "general")
    now = int(time.time())
    posted = [fake_slack.post("C1", f"soon gone {i}", ts=f"{now - 60 + i}.000100")
              for i in range(2)]
    export(store, fake_slack)
    for ts in posted:
        fake_slack.delete("C1", ts)
    assert export(store, fake_slack).deleted == 2
    assert export(store, fake_slack, settings={"recheck_days": 0}).deleted == 0


def test_rate_limit_storm(store: Store, fake_slack: FakeSlack) -> None:
    build(fake_slack)
    fake_slack.retry_after = "0"
    fake_slack.ratelimit.update({"conversations.history": 3, "users.list": 2,
                                 "conversations.replies": 1})
    export(store, fake_slack)
    assert stored(store) == people(fake_slack, "C1", "C2", "G1")
    assert fake_slack.ratelimit["conversations.history"] == 0


@pytest.mark.parametrize("fail_after", [0, 1, 2, 4, 6, 8])
def test_failure_mid_run_then_resume(store: Store, fake_slack: FakeSlack, fail_after: int) -> None:
    build(fake_slack, general=20)
    fake_slack.fail_after["conversations.history"] = fail_after
    with pytest.raises(SlackExportError, match="internal_error"):
        export(store, fake_slack)
    with store.session() as s:
        assert s.scalars(select(Run.status)).one() == "failed"
    fake_slack.fail_after.clear()
    export(store, fake_slack)
    assert stored(store) == people(fake_slack, "C1", "C2", "G1")


def test_bad_token(store: Store, fake_slack: FakeSlack) -> None:
    build(fake_slack)
    with pytest.raises(SlackExportError, match="SLACK_BOT_TOKEN is invalid") as info:
        export(store, fake_slack, settings={"slack_bot_token": "xoxb-wrong-secret"})
    assert "wrong-secret" not in str(info.value)
    with pytest.raises(SlackExportError, match="SLACK_BOT_TOKEN is not set"):
        export(store, fake_slack, settings={"slack_bot_token": None})


def test_missing_scope_names_it(store: Store, fake_slack: FakeSlack) -> None:
    build(fake_slack)
    fake_slack.scopes.discard("groups:history")
    with pytest.raises(SlackExportError, match="groups:history") as info:
        export(store, fake_slack)
    assert "reinstall" in str(info.value)


def test_allowlist_and_channel_names(store: Store, fake_slack: FakeSlack) -> None:
    build(fake_slack)
    summary = export(store, fake_slack, settings={"channels": ["#General", "secret"]})
    assert sorted(summary.channels) == ["general", "secret"]
    assert summary.not_member == []  # lobby is not on the allowlist: not even mentioned
    summary = export(store, fake_slack, channels=["#random"], full=True)
    assert summary.channels == ["random"]
    assert stored(store) == people(fake_slack, "C1", "C2", "G1")
    with pytest.raises(SlackExportError, match="#general"):
        export(store, fake_slack, channels=["genral"])
    with pytest.raises(SlackExportError, match="/invite @mimic"):
        export(store, fake_slack, channels=["lobby"])
    with pytest.raises(SlackExportError, match="MIMIC_CHANNELS"):
        export(store, fake_slack, channels=["random"], settings={"channels": ["general"]})


def test_unreachable_slack(store: Store) -> None:
    fake = FakeSlack()  # never started: the port is bound but nothing answers
    fake.stop()
    with pytest.raises(SlackExportError, match="Cannot reach Slack"):
        export(store, fake)


def cli_env(store: Store, fake: FakeSlack, token: str = TOKEN) -> dict[str, str]:
    """Environment for `python -m mimic.cli` (run in tmp_path, so no .env is read)."""
    env = os.environ | {"DATABASE_URL": store.engine.url.render_as_string(hide_password=False),
                        "SLACK_BOT_TOKEN": token, "SLACK_API_URL": fake.url,
                        "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    env.pop("MIMIC_CHANNELS", None)
    return env


def test_cli(store: Store, fake_slack: FakeSlack, tmp_path: Path) -> None:
    build(fake_slack)
    command = [sys.executable, "-m", "mimic.cli", "export", "--channel", "general",
               "--channel", "#secret"]
    done = subprocess.run(command, cwd=tmp_path, env=cli_env(store, fake_slack),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "#general" in done.stdout and "17 new or edited" in done.stdout
    assert stored(store) == people(fake_slack, "C1", "G1")
    bad = subprocess.run(command, cwd=tmp_path, env=cli_env(store, fake_slack, "xoxb-nope-42"),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "SLACK_BOT_TOKEN is invalid" in bad.stderr and "nope-42" not in bad.stderr + bad.stdout


@pytest.mark.slow
def test_kill_9_then_resume(store: Store, fake_slack: FakeSlack, tmp_path: Path) -> None:
    build(fake_slack, general=40)
    fake_slack.delay["conversations.history"] = 0.1
    proc = subprocess.Popen([sys.executable, "-m", "mimic.cli", "export"], cwd=tmp_path,
                            env=cli_env(store, fake_slack), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    try:
        while True:  # wait until some pages of #general were committed, not for a fixed time
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "export never committed a page"
            with store.session() as s:
                low = s.scalar(select(Watermark.pending_low).where(Watermark.channel_id == "C1"))
                count = s.scalar(select(func.count()).select_from(Message))
            if low is not None and count >= 9:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 0 < len(stored(store)) < len(people(fake_slack, "C1", "C2", "G1"))
    fake_slack.delay.clear()
    fake_slack.post("C1", "posted while it was down", "U1")
    summary = export(store, fake_slack)
    assert stored(store) == people(fake_slack, "C1", "C2", "G1")
    # Resumed below the last stored page instead of fetching #general from the top again.
    assert summary.per_channel["general"] <= len(people(fake_slack, "C1")) - 9 + 3
