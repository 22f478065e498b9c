"""mimic in conversations: mentions answered in their thread, the "Mimic a reply" shortcuts,
look-alike posting. The real Bolt app over HTTP, signed events and payloads, the fake Slack
Web API (which records what the app posts)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from slack_sdk import WebClient

from mimic.bot.threads import read_before
from mimic.core.inert import WORD_JOINER
from mimic.trainer.privacy import opt_out
from tests.running import Running
from tests.slack_client import event, interaction, slash
from tests.test_app import PING

ALICE = f"@{WORD_JOINER}alice"


def mention(r: Running, text: str, *, thread_ts: str | None = None, user: str = "U2",
            channel: str = "C1") -> str:
    """Post a mention in the fake Slack and send its app_mention event; returns its ts."""
    ts = r.slack.post(channel, text, user, thread_ts=thread_ts)
    payload = {"type": "app_mention", "user": user, "text": text, "ts": ts,
               "channel": channel, "event_ts": ts}
    if thread_ts:
        payload["thread_ts"] = thread_ts
    assert event(r.url, payload)[0] == 200
    return ts


def a_thread(r: Running) -> str:
    parent = r.slack.post("C1", "who has a cat picture for me?", "U2")
    r.slack.post("C1", "<@U1|alice> you must have one", "U2", thread_ts=parent)
    r.slack.post("C1", "build passed", "UBOT", thread_ts=parent, bot_id="B1")
    return parent


def test_context_is_the_threads_people_before_the_reply(running: Running) -> None:
    parent = a_thread(running)
    until = running.slack.post("C1", "<@UBOT> alice", "U2", thread_ts=parent)
    running.slack.post("C1", "said after: not read", "U2", thread_ts=parent)
    client = WebClient(token=running.slack.token, base_url=running.slack.url)
    context = read_before(client, running.store, "C1", until=until, thread_ts=parent)
    # The bot's message is left out, markup reads as people see it.
    assert context == [("U2", "who has a cat picture for me?"), ("U2", "@alice you must have one")]
    assert running.slack.calls["conversations.replies"] >= 2  # pages of 3
    assert read_before(client, running.store, "C1", until=until, thread_ts=parent,
                       inclusive=True)[-1] == ("U2", "@UBOT alice")

    opt_out(running.store, running.settings.data_dir, "U2")  # forgotten, here too
    assert read_before(client, running.store, "C1", until=until, thread_ts=parent) == []


def test_a_mention_in_a_thread_is_answered_in_it(running: Running) -> None:
    parent = a_thread(running)
    mention(running, "<@UBOT> be <@U1|alice> temp=0.9", thread_ts=parent)
    posted = running.slack.wait_sent("chat.postMessage")[0]
    assert posted["channel"] == "C1" and posted["thread_ts"] == parent
    header, body = posted["text"].split("\n", 1)
    assert f"mimicking {ALICE} · temp 0.9" in header and "not a real message" in header
    assert body.startswith("&gt;") and not PING.search(posted["text"])
    assert "username" not in posted  # MIMIC_POST_AS is off by default
    assert running.slack.calls["conversations.replies"] >= 1


def test_a_mention_outside_a_thread_starts_one_under_it(running: Running) -> None:
    running.slack.post("C1", "anyone around?", "U2")
    ts = mention(running, "<@UBOT> alice")
    posted = running.slack.wait_sent("chat.postMessage")[0]
    assert posted["thread_ts"] == ts and ALICE in posted["text"]
    assert running.slack.calls["conversations.history"] == 1


@pytest.mark.parametrize(("text", "expected"), [
    ("<@UBOT>", "Mention me with whose voice"),
    ("<@UBOT> help", "Mention me with whose voice"),
    ("<@UBOT> #secret", "No channel called #secret"),  # private, asked from #general
    ("<@UBOT> nobody", "No person called @\u2060nobody"),
    ("<@UBOT> alice temp=7", "out of range"),
])
def test_help_and_refusals_go_to_the_asker_only(running: Running, text: str,
                                                expected: str) -> None:
    mention(running, text)
    said = running.slack.wait_sent("chat.postEphemeral")[0]
    assert said["user"] == "U2" and expected in said["text"]
    assert running.slack.calls["chat.postMessage"] == 0


def message_action(message: dict, callback: str = "mimic_reply", user: str = "U2",
                   response_url: str = "") -> dict:
    return {"type": "message_action", "callback_id": callback, "trigger_id": "13345.7.ab",
            "user": {"id": user}, "channel": {"id": "C1", "name": "general"},
            "team": {"id": "T1"}, "message": message, "response_url": response_url,
            "token": "unused"}


def test_the_shortcut_answers_as_the_messages_author(running: Running) -> None:
    ts = running.slack.post("C1", "WHO LIKES CATS", "U1")
    message = {"type": "message", "user": "U1", "text": "WHO LIKES CATS", "ts": ts}
    assert interaction(running.url, message_action(message))[0] == 200
    posted = running.slack.wait_sent("chat.postMessage")[0]
    assert posted["thread_ts"] == ts and ALICE in posted["text"]


def test_the_shortcut_on_an_opted_out_persons_message_is_refused(running: Running) -> None:
    opt_out(running.store, running.settings.data_dir, "U1")
    ts = running.slack.post("C1", "WHO LIKES CATS", "U1")
    response_url = running.catcher.url()
    message = {"type": "message", "user": "U1", "text": "WHO LIKES CATS", "ts": ts}
    assert interaction(running.url, message_action(message, response_url=response_url))[0] \
        == 200
    refused = running.catcher.wait(response_url)[0]
    assert refused["response_type"] == "ephemeral" and "opted out" in refused["text"]
    assert running.slack.calls["chat.postMessage"] == 0


def test_reply_as_someone_else_through_the_modal(running: Running) -> None:
    ts = running.slack.post("C1", "the boat is ready", "U2")
    message = {"type": "message", "user": "U2", "text": "the boat is ready", "ts": ts}
    assert interaction(running.url, message_action(message, "mimic_reply_as"))[0] == 200
    view = json.loads(running.slack.wait_sent("views.open")[0]["view"])

    def submit(metadata: str, person: str = "U1") -> None:
        payload = {"type": "view_submission", "user": {"id": "U2"}, "team": {"id": "T1"},
                   "view": {**view, "id": "V1", "private_metadata": metadata,
                            "state": {"values": {"person": {"person": {
                                "type": "users_select", "selected_user": person}}}}}}
        assert interaction(running.url, payload)[0] == 200

    submit(json.dumps({"channel": "C1", "ts": "../../x", "thread_ts": None}))  # forged
    submit(view["private_metadata"])
    posted = running.slack.wait_sent("chat.postMessage")[0]
    assert posted["thread_ts"] == ts and ALICE in posted["text"]
    assert running.slack.calls["chat.postMessage"] == 1  # the forged one posted nothing


@pytest.mark.parametrize("running", [{"post_as": "name"}], indirect=True)
def test_look_alike_posting_borrows_name_and_avatar_inertly(running: Running) -> None:
    running.slack.users[0]["profile"] |= {"display_name": "@here alice",
                                          "image_72": "https://avatars.example/a.png"}
    mention(running, "<@UBOT> alice")
    posted = running.slack.wait_sent("chat.postMessage")[0]
    assert posted["username"] == f"@{WORD_JOINER}here alice (mimic)"
    assert posted["icon_url"] == "https://avatars.example/a.png"
    assert "generated text, not a real message" in posted["text"]


def test_mentions_are_answered_while_a_retrain_runs(running: Running) -> None:
    retrain_url = running.catcher.url()
    assert slash(running.url, "retrain @alice", retrain_url, user="U9")[0] == 200
    assert "Retraining" in running.catcher.wait(retrain_url)[0]["text"]
    mention(running, "<@UBOT> alice")
    running.slack.wait_sent("chat.postMessage")
    answered = next(at for method, _args, at in running.slack.sent
                    if method == "chat.postMessage")
    bodies = running.catcher.wait(retrain_url, count=5, timeout=120)
    assert "Retraining finished" in bodies[-1]["text"]
    assert answered < running.catcher.arrived[urlsplit(retrain_url).path][-1]


def test_the_manifest_declares_what_the_app_listens_to() -> None:
    import yaml

    manifest = yaml.safe_load((Path(__file__).parents[1] / "manifest.yml").read_text())
    assert "app_mention" in manifest["settings"]["event_subscriptions"]["bot_events"]
    assert "app_mentions:read" in manifest["oauth_config"]["scopes"]["bot"]
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert {s["callback_id"] for s in manifest["features"]["shortcuts"]} == {
        "mimic_reply", "mimic_reply_as"}


@pytest.mark.parametrize("broken", [
    {"user": "U2"}, {"channel": None}, {"message": "hi"}, {"message": {"ts": "yesterday"}},
    {"user": {"id": "u2; drop"}},
])
def test_a_malformed_shortcut_payload_is_answered_not_crashed_on(running: Running,
                                                                broken: dict) -> None:
    response_url = running.catcher.url()
    good = message_action({"type": "message", "user": "U1", "text": "x", "ts": "1.000100"},
                          response_url=response_url)
    assert interaction(running.url, good | broken)[0] == 200
    said = running.catcher.wait(response_url)[0]
    assert said["response_type"] == "ephemeral" and "did not come with a message" in said["text"]
    assert running.slack.calls["chat.postMessage"] == 0
