"""A fake Slack Web API over real HTTP, for tests that drive the real `slack_sdk.WebClient`.

It keeps a small in-memory workspace and answers the read methods the exporter uses the way
Slack does: bearer-token auth, scopes, membership, cursor pagination with small pages, newest
first history, threads, and 429 bursts with `Retry-After`.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.slack_client import BurstServer

TOKEN = "xoxb-test-token"
ALL_SCOPES = frozenset({"users:read", "channels:read", "groups:read", "channels:history",
                        "groups:history", "chat:write", "chat:write.customize"})
# What the app writes, recorded in `sent` (method, arguments, time it arrived).
WRITES = frozenset({"chat.postMessage", "chat.postEphemeral", "views.open"})


class SlackError(Exception):
    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.body = {"ok": False, "error": error, **extra}


class FakeSlack:
    """The workspace plus knobs; `url` is the base URL to hand to `WebClient(base_url=...)`."""

    def __init__(self, page_size: int = 3) -> None:
        self.page_size = page_size
        self.token = TOKEN
        self.scopes: set[str] = set(ALL_SCOPES)
        self.users: list[dict[str, Any]] = []
        self.channels: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, dict[str, dict[str, Any]]] = {}  # channel → ts → message
        self.calls: Counter[str] = Counter()
        self.sent: list[tuple[str, dict[str, str], float]] = []
        self._sent_changed = threading.Condition()
        self.ratelimit: Counter[str] = Counter()  # method → how many next calls answer 429
        self.retry_after = "1"
        self.delay: dict[str, float] = {}  # method → seconds to sleep before answering
        self.fail_after: dict[str, int] = {}  # method → answer internal_error after N calls
        self._lock = threading.RLock()  # the API's writes post messages under it
        self.views: dict[str, list[dict[str, Any]]] = {}  # user → Home views, oldest first
        self._published = threading.Condition(self._lock)
        self._clock = 1_700_000_000
        # Its backlog takes a burst: 20 mentions read their threads and post at once.
        self._server = BurstServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/"

    def start(self) -> FakeSlack:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever, forever if never run
            self._server.shutdown()
        self._server.server_close()

    # -- building the workspace --

    def add_user(self, uid: str, name: str, **extra: Any) -> None:
        self.users.append({"id": uid, "name": name, "real_name": name.title(),
                           "profile": {"display_name": name}, **extra})

    def add_channel(self, cid: str, name: str, *, private: bool = False, member: bool = True,
                    archived: bool = False) -> None:
        self.channels[cid] = {"id": cid, "name": name, "is_channel": not private,
                              "is_group": private, "is_private": private, "is_member": member,
                              "is_archived": archived}
        self.messages.setdefault(cid, {})

    def post(self, channel: str, text: str, user: str = "U1", *, thread_ts: str | None = None,
             ts: str | None = None, **extra: Any) -> str:
        """Add a message (a reply when `thread_ts` is given); returns its ts."""
        with self._lock:
            if ts is None:
                self._clock += 1
                ts = f"{self._clock}.000100"
            message = {"type": "message", "user": user, "text": text, "ts": ts, **extra}
            if thread_ts:
                message["thread_ts"] = thread_ts
                parent = self.messages[channel].get(thread_ts)
                if parent is not None:
                    message["parent_user_id"] = parent["user"]
            self.messages[channel][ts] = message
        return ts

    def edit(self, channel: str, ts: str, text: str) -> None:
        with self._lock:
            self._clock += 1
            message = self.messages[channel][ts]
            message["text"] = text
            message["edited"] = {"user": message.get("user"), "ts": f"{self._clock}.000000"}

    def delete(self, channel: str, ts: str) -> None:
        """Delete a message as Slack does: a thread parent with replies left becomes a
        tombstone, anything else is gone from history."""
        with self._lock:
            replies = [m for m in self.messages[channel].values()
                       if m.get("thread_ts") == ts and m["ts"] != ts]
            if replies:
                self.messages[channel][ts] = {"type": "message", "subtype": "tombstone",
                                              "user": "USLACKBOT", "hidden": True, "ts": ts,
                                              "text": "This message was deleted."}
            else:
                del self.messages[channel][ts]

    def wait_sent(self, method: str, count: int = 1, timeout: float = 30
                  ) -> list[dict[str, str]]:
        """The arguments of the first `count` calls of write `method`, once they came."""
        def found() -> list[dict[str, str]]:
            return [args for m, args, _at in self.sent if m == method]
        with self._sent_changed:
            if not self._sent_changed.wait_for(lambda: len(found()) >= count, timeout):
                raise AssertionError(f"{method}: {found()}, wanted {count}")
            return found()[:count]

    def wait_posted(self, thread_ts: str, timeout: float = 30) -> float:
        """When (perf_counter) the first chat.postMessage into thread `thread_ts` came."""
        def at() -> float | None:
            return next((when for m, args, when in self.sent if m == "chat.postMessage"
                         and args.get("thread_ts") == thread_ts), None)
        with self._sent_changed:
            if not self._sent_changed.wait_for(lambda: at() is not None, timeout):
                raise AssertionError(f"nothing was posted in thread {thread_ts}")
            return at()  # type: ignore[return-value]

    def wait_views(self, user: str, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
        """The Home views published to `user`, once there are at least `count`."""
        with self._published:
            if not self._published.wait_for(lambda: len(self.views.get(user, [])) >= count,
                                            timeout):
                raise AssertionError(f"{user} got {self.views.get(user, [])}, wanted {count}")
            return list(self.views[user])

    # -- the API --

    def _top_level(self, channel: str) -> list[dict[str, Any]]:
        found = []
        for m in self.messages[channel].values():
            if m.get("thread_ts", m["ts"]) != m["ts"]:
                continue  # a reply: history shows only its parent
            m = dict(m)
            replies = self._replies(channel, m["ts"])[1:]
            if replies:
                m |= {"thread_ts": m["ts"], "reply_count": len(replies),
                      "latest_reply": replies[-1]["ts"]}
            found.append(m)
        return found

    def _replies(self, channel: str, ts: str) -> list[dict[str, Any]]:
        thread = [m for m in self.messages[channel].values()
                  if m["ts"] == ts or m.get("thread_ts") == ts]
        return sorted(thread, key=lambda m: Decimal(m["ts"]))

    def _page(self, items: list[Any], args: dict[str, str], key: str) -> dict[str, Any]:
        start = int(args.get("cursor") or 0)
        limit = min(int(args.get("limit") or 100), self.page_size)
        page = items[start:start + limit]
        more = start + limit < len(items)
        return {"ok": True, key: page, "has_more": more,
                "response_metadata": {"next_cursor": str(start + limit) if more else ""}}

    def _need(self, scope: str) -> None:
        if scope not in self.scopes:
            raise SlackError("missing_scope", needed=scope, provided=",".join(sorted(self.scopes)))

    def _channel(self, args: dict[str, str], history: bool) -> str:
        channel = self.channels.get(args.get("channel", ""))
        if channel is None:
            raise SlackError("channel_not_found")
        if history:
            self._need("groups:history" if channel["is_private"] else "channels:history")
            if not channel["is_member"]:
                raise SlackError("not_in_channel")
        return channel["id"]

    def answer(self, method: str, args: dict[str, str]) -> dict[str, Any]:
        if method == "auth.test":
            return {"ok": True, "user_id": "UBOT", "user": "mimic", "team": "Test"}
        if method == "users.list":
            self._need("users:read")
            return self._page(self.users, args, "members")
        if method == "users.info":
            self._need("users:read")
            user = next((u for u in self.users if u["id"] == args.get("user")), None)
            if user is None:
                raise SlackError("user_not_found")
            return {"ok": True, "user": user}
        if method == "conversations.list":
            types = (args.get("types") or "public_channel").split(",")
            if "public_channel" in types:
                self._need("channels:read")
            if "private_channel" in types:
                self._need("groups:read")
            listed = [c for c in self.channels.values()
                      if ("private_channel" if c["is_private"] else "public_channel") in types
                      and (c["is_member"] or not c["is_private"])
                      and not (c["is_archived"] and args.get("exclude_archived") in ("1", "true"))]
            return self._page(listed, args, "channels")
        if method == "conversations.info":
            cid = self._channel(args, history=False)
            return {"ok": True, "channel": self.channels[cid]}
        if method == "conversations.history":
            cid = self._channel(args, history=True)
            inclusive = args.get("inclusive") in ("1", "true")
            oldest = Decimal(args.get("oldest") or 0)
            latest = Decimal(args["latest"]) if args.get("latest") else None
            chosen = [m for m in self._top_level(cid)
                      if (Decimal(m["ts"]) >= oldest if inclusive else Decimal(m["ts"]) > oldest)
                      and (latest is None or (Decimal(m["ts"]) <= latest if inclusive
                                              else Decimal(m["ts"]) < latest))]
            chosen.sort(key=lambda m: Decimal(m["ts"]), reverse=True)
            return self._page(chosen, args, "messages")
        if method == "conversations.replies":
            cid = self._channel(args, history=True)
            thread = self._replies(cid, args.get("ts", ""))
            if not thread:
                raise SlackError("thread_not_found")
            return self._page(thread, args, "messages")
        if method == "views.publish":
            view = json.loads(args.get("view") or "null")
            # Slack refuses a Home view that breaks its limits; a fake that took it would hide
            # a view the real one never shows.
            if not isinstance(view, dict) or view.get("type") != "home" \
                    or not 0 < len(view.get("blocks") or []) <= 100:
                raise SlackError("invalid_arguments")
            if any(len(b.get("text", {}).get("text", "")) > 3000 for b in view["blocks"]):
                raise SlackError("invalid_blocks")
            self.views.setdefault(args.get("user_id", ""), []).append(view)
            self._published.notify_all()
            return {"ok": True, "view": view}
        if method in WRITES:
            if method.startswith("chat."):
                self._need("chat:write")
                self._channel(args, history=False)
            ts = self.post(args["channel"], args.get("text", ""), "UBOT", bot_id="BBOT",
                           thread_ts=args.get("thread_ts")) if method == "chat.postMessage" \
                else None
            with self._sent_changed:
                self.sent.append((method, args, time.perf_counter()))
                self._sent_changed.notify_all()
            return {"ok": True, **({"ts": ts, "channel": args["channel"]} if ts else {})}
        raise SlackError("unknown_method")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass  # keep test output clean

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._serve()

            def do_POST(self) -> None:  # noqa: N802
                self._serve()

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                method = parts.path.rsplit("/", 1)[-1]
                args = dict(parse_qsl(parts.query))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if body:
                    if "json" in (self.headers.get("Content-Type") or ""):
                        # Objects (views.publish's view) stay JSON, as Slack reads them.
                        args |= {k: v if isinstance(v, str) else json.dumps(v)
                                 for k, v in json.loads(body).items()}
                    else:
                        args |= dict(parse_qsl(body.decode()))
                auth = self.headers.get("Authorization", "")
                token = auth.removeprefix("Bearer ") if auth else args.get("token", "")
                with fake._lock:
                    fake.calls[method] += 1
                    limited = fake.ratelimit[method] > 0
                    if limited:
                        fake.ratelimit[method] -= 1
                    failing = fake.calls[method] > fake.fail_after.get(method, 1 << 30)
                time.sleep(fake.delay.get(method, 0))
                status, headers = 200, {}
                if limited:
                    status, headers = 429, {"Retry-After": fake.retry_after}
                    reply: dict[str, Any] = {"ok": False, "error": "ratelimited"}
                elif token != fake.token:
                    reply = {"ok": False, "error": "invalid_auth" if token else "not_authed"}
                elif failing:
                    reply = {"ok": False, "error": "internal_error"}
                else:
                    with fake._lock:
                        try:
                            reply = fake.answer(method, args)
                        except SlackError as exc:
                            reply = exc.body
                data = json.dumps(reply).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
