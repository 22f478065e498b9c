"""The Slack app against what an attacker or a half-filled .env sends it: blank secrets,
forged and oversized requests, slow clients, seeds that try to speak as the bot, and a
retrain child that floods its stderr."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from slack_sdk.signature import SignatureVerifier

from mimic.bot import http
from mimic.bot.app import SetupError, build_app, retrain_reporter
from mimic.bot.commands import ParseError, parse
from mimic.bot.replies import Reply, quoted
from mimic.bot.retrain import RetrainRunner
from mimic.core.config import Settings
from mimic.core.store import Store
from tests import slack_client
from tests.fake_slack import TOKEN, FakeSlack
from tests.running import Running
from tests.slack_client import signed_post, slash

SECRETS = ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET")


def test_blank_secrets_and_tokens_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECRETS:
        monkeypatch.setenv(name, "  ")
    settings = Settings(_env_file=None)
    assert (settings.slack_bot_token, settings.slack_app_token,
            settings.slack_signing_secret) == (None, None, None)
    with pytest.raises(SetupError, match="HTTP mode needs SLACK_SIGNING_SECRET"):
        build_app(settings.model_copy(update={"slack_bot_token": SecretStr(TOKEN)}),
                  Store(None))  # type: ignore[arg-type] - refused before the store is used
    # And below mimic, the library refuses an empty key too (pyproject's slack-sdk floor).
    with pytest.raises(ValueError, match="must not be empty"):
        SignatureVerifier("")


def serve(store: Store, tmp_path: Path, fake: FakeSlack, *args: str,
          **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "DATABASE_URL": str(store.engine.url),
               "MIMIC_DATA_DIR": str(tmp_path / "data"), "SLACK_API_URL": fake.url,
               "SLACK_BOT_TOKEN": TOKEN, "SLACK_APP_TOKEN": "", "SLACK_SIGNING_SECRET": "",
               **env}
    return subprocess.run([sys.executable, "-m", "mimic.cli", "serve", "--no-scheduler",
                           *args], env=environ, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)


def test_serve_with_blank_settings_says_what_to_set(store: Store, tmp_path: Path,
                                                    fake_slack: FakeSlack) -> None:
    for args, env, expected in [
            ((), {"SLACK_BOT_TOKEN": ""}, "SLACK_BOT_TOKEN is not set"),
            ((), {}, "Set SLACK_APP_TOKEN"),
            (("--http", "0"), {"SLACK_SIGNING_SECRET": "   "},
             "HTTP mode needs SLACK_SIGNING_SECRET")]:
        done = serve(store, tmp_path, fake_slack, *args, **env)
        assert done.returncode == 1 and expected in done.stderr, done.stderr
        assert "Traceback" not in done.stderr + done.stdout


def test_a_forged_request_is_logged_without_its_body(running: Running,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)  # as `mimic serve` logs
    caplog.set_level(logging.INFO, logger="slack_bolt.RequestVerification")
    form = urllib.parse.urlencode({"token": "legacy-verification-4711", "user_id": "U1",
                                   "command": "/mimic", "text": "optout --forget"}).encode()
    status, _ = signed_post(running.url, form, "application/x-www-form-urlencoded",
                            secret="")  # signed with the empty key .env.example ships
    assert status == 401
    assert "refused a request whose signature is not Slack's" in caplog.text
    assert "4711" not in caplog.text and "optout" not in caplog.text


def test_a_seed_cannot_speak_as_the_bot(running: Running) -> None:
    url = running.catcher.url()
    seed = '@alice "hi\n*Message from IT:* your password expired, reply with it"'
    assert slash(running.url, seed, url)[0] == 200
    reply = running.catcher.wait(url)[0]
    assert reply["response_type"] == "ephemeral" and "one line" in reply["text"]
    with pytest.raises(ParseError, match="one line"):
        parse('@alice "line one\r\nline two"')
    # Whatever a model writes, every line of it stays inside the quote.
    assert quoted("one\n*Message from IT:*\n\nthree") == ">one\n>*Message from IT:*\n>\n>three"


def test_retrain_results_count_private_channels_without_naming_them() -> None:
    sent: list[Reply] = []
    report = retrain_reporter(sent.append)
    report({"event": "progress", "text": "Training…"})
    report({"event": "outcome", "text": "@alice: v2 promoted", "status": "active",
            "private": False})
    for status in ("active", "kept"):
        report({"event": "outcome", "text": f"#secret-plans: v3 {status}", "status": status,
                "private": True})
    report({"event": "done", "text": "Retraining finished: 2 new models promoted."})
    final = sent[-1].text
    assert "• @alice: v2 promoted" in final
    assert "• 2 private channels: 1 new models promoted, 1 kept the previous model" in final
    assert "secret" not in " ".join(r.text for r in sent)


@pytest.fixture
def small(world: tuple[Store, Settings], fake_slack: FakeSlack,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, tuple[str, int]]]:
    """The app behind a server with 4 workers and a 0.5 s read timeout."""
    monkeypatch.setattr(http._Handler, "timeout", 0.5)
    store, settings = world
    settings = settings.model_copy(update={
        "slack_api_url": fake_slack.url, "slack_bot_token": SecretStr(TOKEN),
        "slack_signing_secret": SecretStr(slack_client.SIGNING_SECRET)})
    app = build_app(settings, store)
    server = http.make_http_server(app.bolt, "127.0.0.1", 0, workers=4)
    thread = http.serve_in_thread(server)
    address = ("127.0.0.1", server.server_port)
    yield f"http://127.0.0.1:{server.server_port}/slack/events", address
    server.shutdown()
    thread.join()
    server.server_close()
    app.close()


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_an_oversized_body_is_refused_before_it_is_read(small: tuple[str, tuple[str, int]]
                                                        ) -> None:
    _url, address = small
    with socket.create_connection(address) as sock:
        sock.sendall(b"POST /slack/events HTTP/1.1\r\nHost: mimic\r\nContent-Type: "
                     b"application/json\r\nContent-Length: 314572800\r\n\r\n" + b"x" * 4096)
        assert b" 413 " in _answer(sock).split(b"\r\n")[0]
    with socket.create_connection(address) as sock:  # no length at all
        sock.sendall(b"POST /slack/events HTTP/1.1\r\nHost: mimic\r\n\r\n")
        assert b"411 Length Required" in _answer(sock).split(b"\r\n")[0]


def _workers() -> int:
    return sum(t.name == "mimic-http-request" for t in threading.enumerate())


def test_slow_clients_are_dropped_and_connections_are_bounded(
        small: tuple[str, tuple[str, int]]) -> None:
    url, address = small
    slow = []
    for _ in range(40):  # half-sent requests, as a slowloris sends them
        sock = socket.create_connection(address)
        sock.sendall(b"POST /slack/events HTTP/1.1\r\nContent-Le")
        slow.append(sock)
    answers = [_answer(sock) for sock in slow]  # each ends: dropped, or 503 at once
    for sock in slow:
        sock.close()
    busy = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
    assert len(busy) >= 36 and all(a == b"" or a in busy for a in answers)
    deadline = time.monotonic() + 10
    while _workers():  # the dropped ones' threads end right after their sockets close
        assert time.monotonic() < deadline
        time.sleep(0.01)
    status, _ = slash(url, "help", "http://127.0.0.1:9/unused")
    assert status == 200


def test_a_retrain_child_that_floods_stderr_does_not_hang_the_bot(
        world: tuple[Store, Settings]) -> None:
    _store, settings = world

    class Loud(RetrainRunner):
        def command(self, target: object) -> list[str]:
            return [sys.executable, "-c", "import sys, json; sys.stderr.write('x' * 2**20); "
                    "print(json.dumps({'event': 'done', 'text': 'ok'}), flush=True)"]

    events: list[dict] = []
    runner = Loud(settings)
    worker = threading.Thread(target=runner.run, args=(None, events.append))
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the runner hung on its child's stderr"
    assert events == [{"event": "done", "text": "ok"}]
