"""HTTP mode: the Bolt app behind a small threaded WSGI server (`POST /slack/events`).

It is meant to sit behind a reverse proxy (README), but holds its own against what reaches it:
a request body over MAX_BODY_BYTES is refused before it is read, a client that stops sending
is dropped after CLIENT_TIMEOUT_S, and at most MAX_WORKERS connections are served at once (the
next ones get 503 at once instead of a thread each).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler

log = logging.getLogger(__name__)

# Slack's payloads are a few KB (a message event with blocks, tens): 1 MiB is ample.
MAX_BODY_BYTES = 2**20
CLIENT_TIMEOUT_S = 10.0  # per read: a client silent this long is dropped
MAX_WORKERS = 64  # connections served at once; beyond, 503 (requests are short: ack < 3 s)
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
         b"Connection: close\r\n\r\n")


class _Server(WSGIServer):
    """One thread per connection, at most MAX_WORKERS of them; server_close joins them.

    With `handed`, it listens on nothing itself: `mimic serve --processes N`'s supervisor
    accepts the connections and hands each over this Unix socket (bot/processes.py)."""

    request_queue_size = 128  # socketserver's 5 resets a burst of concurrent commands

    def __init__(self, address: tuple[str, int], handler: type[WSGIRequestHandler],
                 workers: int = MAX_WORKERS, handed: socket.socket | None = None) -> None:
        super().__init__(address, handler, bind_and_activate=handed is None)
        if handed is not None:  # serve what the supervisor hands over, on its address
            self.socket.close()
            self.socket = handed
            self.server_name, self.server_port = socket.getfqdn(address[0]), address[1]
            self.setup_environ()
        self.handed, self.orphaned = handed is not None, False
        self._slots = threading.BoundedSemaphore(workers)
        self._workers: set[threading.Thread] = set()
        self._workers_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        if not self.handed:
            return super().get_request()
        _message, fds, _flags, _address = socket.recv_fds(self.socket, 1, 1)
        if not fds:  # the supervisor is gone: stop as it would have asked (SIGTERM), once
            if not self.orphaned:
                self.orphaned = True
                os.kill(os.getpid(), signal.SIGTERM)
            raise OSError("mimic serve's supervisor closed the connection hand-over")
        connection = socket.socket(fileno=fds[0])
        try:
            return connection, connection.getpeername()
        except OSError:  # the client left while it was being handed over
            connection.close()
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        worker = threading.Thread(target=self._serve, args=(request, client_address),
                                  name="mimic-http-request")
        with self._workers_lock:
            self._workers.add(worker)
        worker.start()

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - one broken connection must not end the server
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()
            with self._workers_lock:
                self._workers.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("request from %s failed", client_address[0], exc_info=True)

    def server_close(self) -> None:
        super().server_close()
        with self._workers_lock:
            workers = list(self._workers)
        for worker in workers:  # each ends within CLIENT_TIMEOUT_S of its last read
            worker.join(CLIENT_TIMEOUT_S + 5)

    @property
    def busy(self) -> int:
        """Connections being served now."""
        with self._workers_lock:
            return len(self._workers)


class _Handler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT_S  # applied to the socket for every read

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass  # request lines would log Slack's payload paths; Bolt logs what matters

    def handle(self) -> None:
        # A slow or vanished client: the connection is closed, there is nothing to answer.
        with contextlib.suppress(TimeoutError, ConnectionError):
            super().handle()


def _plain(start_response: Any, status: str, text: str) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain")])
    return [text.encode() + b"\n"]


def make_http_server(app: App, host: str = "0.0.0.0", port: int = 3000,
                     workers: int = MAX_WORKERS, handed: socket.socket | None = None) -> _Server:
    """The server for `app` on host:port; with `handed`, for the connections a supervisor
    accepted there and hands over that socket."""
    handler = SlackRequestHandler(app)

    def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO") != "/slack/events":
            return _plain(start_response, "404 Not Found", "mimic listens on POST /slack/events")
        if environ.get("REQUEST_METHOD") != "POST":
            return _plain(start_response, "405 Method Not Allowed", "POST only")
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return _plain(start_response, "411 Length Required", "Content-Length is required")
        if not 0 <= length <= MAX_BODY_BYTES:
            return _plain(start_response, "413 Request Entity Too Large",
                          f"request bodies are limited to {MAX_BODY_BYTES} bytes")
        try:
            return handler(environ, start_response)
        except ValueError:  # a body that is not UTF-8 or not form/JSON: not Slack's
            return _plain(start_response, "400 Bad Request", "not a Slack request")

    server = _Server((host, port), _Handler, workers, handed)
    server.set_app(wsgi)
    return server


def serve_in_thread(server: WSGIServer) -> threading.Thread:
    """For tests and benches: serve on a thread; stop with server.shutdown() and join it."""
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="mimic-http")
    thread.start()
    return thread
