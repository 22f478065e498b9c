"""The real Bolt app in HTTP mode on 127.0.0.1, its Web API client on the fake Slack, signed
slash commands and events over real HTTP, replies caught at a local response_url."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from mimic.core.store import Message
from mimic.trainer.corpus import resolve
from mimic.trainer.registry import serving
from mimic.trainer.train import train
from tests.running import Running
from tests.slack_client import event, slash

PING = re.compile(r"<[@!#]|[@＠](?!\u2060)\w")


def ask(r: Running, text: str, **kw: str) -> dict:
    response_url = r.catcher.url()
    start = time.perf_counter()
    status, _ = slash(r.url, text, response_url, **kw)
    assert status == 200 and time.perf_counter() - start < 3, "ack must come within 3 s"
    return r.catcher.wait(response_url)[0]


def test_mimic_answers_in_channel_labelled_and_inert(running: Running) -> None:
    reply = ask(running, "<@U1|alice> temp=1.0")
    assert reply["response_type"] == "in_channel"
    header, body = reply["text"].split("\n", 1)
    assert "mimicking @\u2060alice · temp 1 · the workspace model v1" in header
    assert body.startswith("&gt;") and not PING.search(reply["text"])


def test_a_conversation_answers_in_channel_as_one_labelled_inert_message(
        running: Running) -> None:
    reply = ask(running, "<@U1|alice> <@U2|bob> turns=2")
    assert reply["response_type"] == "in_channel", reply["text"]
    header, *lines = reply["text"].split("\n")
    assert "a conversation between @\u2060alice and @\u2060bob · temp" in header
    labels = [line for line in lines if not line.startswith("&gt;")]
    assert labels == ["*@\u2060alice*", "*@\u2060bob*"] and not PING.search(reply["text"])


@pytest.mark.parametrize(("text", "expected"), [
    ("@alice temp=9", "out of range"),
    ("@nobody", "No person called @\u2060nobody"),
    ("@carol", "I need at least 500"),
    ('@alice "unclosed', "unclosed quote"),
    ("#secret", "No channel called #secret"),
    ("help", "optout"),
    ("@alice @bob turns=9", "at most 8 turns"),
])
def test_errors_and_help_are_ephemeral(running: Running, text: str, expected: str) -> None:
    reply = ask(running, text)
    assert reply["response_type"] == "ephemeral"
    assert expected.lower() in reply["text"].lower()


def test_bad_signatures_and_stale_requests_get_401(running: Running) -> None:
    url = running.catcher.url()
    assert slash(running.url, "@alice", url, secret="wrong")[0] == 401
    assert slash(running.url, "@alice", url, timestamp=int(time.time()) - 6 * 60)[0] == 401
    assert running.catcher.bodies == {}


def test_retrain_is_refused_to_non_admins(running: Running) -> None:
    reply = ask(running, "retrain", user="U2")
    assert "only mimic's admins" in reply["text"]
    assert running.slack.calls["users.info"] == 1


def test_admin_retrain_runs_reports_and_refuses_a_second(running: Running) -> None:
    first_url = running.catcher.url()
    assert slash(running.url, "retrain @alice", first_url, user="U8")[0] == 200
    started = running.catcher.wait(first_url)[0]
    assert "Retraining @\u2060alice" in started["text"]
    second = ask(running, "retrain all", user="U9")  # on MIMIC_ADMINS
    assert "already going" in second["text"]
    # started, "Exporting…", export done, "Training…", then the results.
    bodies = running.catcher.wait(first_url, count=5, timeout=120)
    final = bodies[-1]["text"]
    assert "Retraining finished" in final and "@\u2060alice: v1" in final
    assert "validation loss" in final and all(b["response_type"] == "ephemeral"
                                             for b in bodies)


def test_a_new_version_is_swapped_in_under_concurrent_requests(running: Running) -> None:
    with running.store.session() as s:
        bob = resolve(s, "@bob")
    users = [f"U{100 + i}" for i in range(16)]  # one request each: no rate limit in the way
    promote = threading.Thread(target=train, args=(running.store, running.settings, bob),
                               kwargs={"train_overrides": {"max_seconds": 0, "max_steps": 80,
                                                           "batch_size": 8, "seq_len": 32}})
    with ThreadPoolExecutor(8) as pool:
        promote.start()
        replies = list(pool.map(lambda u: ask(running, "@bob", user=u), users))
    promote.join()
    assert all(r["response_type"] == "in_channel" for r in replies)
    served = {re.search(r"(workspace|own) model v(\d+)", r["text"]).groups()  # type: ignore[union-attr]
              for r in replies}
    assert served <= {("workspace", "1"), ("own", "1")}
    after = ask(running, "@bob", user="U200")
    with running.store.session() as s:
        chosen = serving(s, bob)
    assert chosen is not None
    which = "workspace" if chosen.row.target == "base" else "own"
    assert f"{which} model v{chosen.row.version}" in after["text"]


def test_live_ingestion_stores_edits_and_deletes(running: Running) -> None:
    def stored() -> dict[str, tuple[str, bool]]:
        with running.store.session() as s:
            return {m.ts: (m.text, m.deleted) for m in s.scalars(
                select(Message).where(Message.ts >= "1800000000"))}

    def send(payload: dict, until: Callable[[dict], bool]) -> None:
        # Bolt acks an event before its listener runs: wait for the write to land.
        assert event(running.url, {"type": "message", "channel": "C1",
                                   "channel_type": "channel", **payload})[0] == 200
        deadline = time.monotonic() + 10
        while not until(stored()):
            assert time.monotonic() < deadline, stored()
            time.sleep(0.02)

    send({"user": "U1", "text": "hello <@U2>", "ts": "1800000000.000100"},
         lambda m: m.get("1800000000.000100") == ("hello @bob", False))
    send({"subtype": "message_changed", "message": {
        "type": "message", "user": "U1", "text": "hello again", "ts": "1800000000.000100",
        "edited": {"user": "U1", "ts": "1800000005.000000"}}},
        lambda m: m["1800000000.000100"] == ("hello again", False))
    send({"user": "U1", "text": "to be removed", "ts": "1800000001.000100"},
         lambda m: "1800000001.000100" in m)
    send({"subtype": "message_deleted", "deleted_ts": "1800000001.000100"},
         lambda m: m["1800000001.000100"] == ("to be removed", True))
    # Not a person's writing, and a DM: neither is stored (the next event proves they ran).
    event(running.url, {"type": "message", "channel": "C1", "channel_type": "channel",
                        "subtype": "channel_join", "user": "U2", "text": "joined",
                        "ts": "1800000002.000100"})
    event(running.url, {"type": "message", "channel": "D1", "channel_type": "im",
                        "user": "U1", "text": "secret dm", "ts": "1800000003.000100"})
    send({"user": "U2", "text": "last one", "ts": "1800000004.000100"},
         lambda m: "1800000004.000100" in m)
    assert set(stored()) == {"1800000000.000100", "1800000001.000100", "1800000004.000100"}
