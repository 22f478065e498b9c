"""Talking to the real Bolt app over HTTP the way Slack does: signed form posts and events,
and a local catcher standing in for `response_url`."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SIGNING_SECRET = "test-signing-secret"


class BurstServer(ThreadingHTTPServer):
    """A threaded HTTP server for what stands in for Slack's side: the default backlog of 5
    drops connections in a burst (20 replies at once); the client then retries only after a
    second, which would show up as latency that is not the app's."""

    daemon_threads = True
    request_queue_size = 128


class Catcher:
    """Collects what the app POSTs to response URLs: path → list of JSON bodies."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[dict[str, Any]]] = {}
        self.arrived: dict[str, list[float]] = {}
        self._cond = threading.Condition()
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with catcher._cond:
                    catcher.bodies.setdefault(self.path, []).append(body)
                    catcher.arrived.setdefault(self.path, []).append(time.perf_counter())
                    catcher._cond.notify_all()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

        self._server = BurstServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        self._next = 0

    def url(self) -> str:
        """A fresh response URL."""
        self._next += 1
        return f"http://127.0.0.1:{self._server.server_address[1]}/r/{self._next}"

    def wait(self, url: str, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
        path = urllib.parse.urlsplit(url).path
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.bodies.get(path, [])) >= count,
                                       timeout):
                raise AssertionError(f"{url} got {self.bodies.get(path, [])}, wanted {count}")
            return list(self.bodies[path])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def signed_post(url: str, body: bytes, content_type: str, *, secret: str = SIGNING_SECRET,
                timestamp: int | None = None) -> tuple[int, bytes]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    # Slack's scheme, computed here: slack_sdk refuses to sign with a forger's empty key.
    signature = "v0=" + hmac.new(secret.encode(), f"v0:{ts}:".encode() + body,
                                 hashlib.sha256).hexdigest()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": content_type, "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def slash(app_url: str, text: str, response_url: str, *, user: str = "U2",
          channel: str = "C1", **signing: Any) -> tuple[int, bytes]:
    form = {"token": "unused", "team_id": "T1", "team_domain": "acme", "channel_id": channel,
            "channel_name": "general", "user_id": user, "user_name": "someone",
            "command": "/mimic", "text": text, "response_url": response_url,
            "trigger_id": "1.2.3", "api_app_id": "A1"}
    return signed_post(app_url, urllib.parse.urlencode(form).encode(),
                       "application/x-www-form-urlencoded", **signing)


def event(app_url: str, payload: dict[str, Any]) -> tuple[int, bytes]:
    envelope = {"token": "unused", "team_id": "T1", "api_app_id": "A1", "type": "event_callback",
                "event_id": f"Ev{time.perf_counter_ns()}", "event_time": int(time.time()),
                "event": payload}
    return signed_post(app_url, json.dumps(envelope).encode(), "application/json")


def interaction(app_url: str, payload: dict[str, Any], **signing: Any) -> tuple[int, bytes]:
    """A signed interactivity request (shortcut, button, modal submission): Slack sends the
    payload as JSON in the form field `payload`."""
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    return signed_post(app_url, body, "application/x-www-form-urlencoded", **signing)


def action(app_url: str, action_id: str, *, user: str = "U2", **signing: Any) -> tuple[int, bytes]:
    """A button pressed on the App Home: a block_actions payload, form-encoded and signed the
    way Slack sends it (anyone can post one: only the signature says it came from Slack)."""
    payload = {"type": "block_actions", "token": "unused", "api_app_id": "A1",
               "team": {"id": "T1", "domain": "acme"},
               "user": {"id": user, "username": "someone", "team_id": "T1"},
               "container": {"type": "view", "view_id": "V1"}, "trigger_id": "1.2.3",
               "view": {"id": "V1", "type": "home", "blocks": []},
               "actions": [{"type": "button", "action_id": action_id, "block_id": "b1",
                            "text": {"type": "plain_text", "text": action_id},
                            "action_ts": f"{time.time():.6f}"}]}
    return interaction(app_url, payload, **signing)
