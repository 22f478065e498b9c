"""HTTP mode: the Bolt app behind a small threaded WSGI server (`POST /slack/events`)."""

from __future__ import annotations

import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # each request on its own thread: acks never queue behind others
    request_queue_size = 128  # socketserver's 5 resets a burst of concurrent commands


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass  # request lines would log Slack's payload paths; Bolt logs what matters


def make_http_server(app: App, host: str = "0.0.0.0", port: int = 3000) -> WSGIServer:
    handler = SlackRequestHandler(app)

    def wsgi(environ, start_response):  # noqa: ANN001, ANN202 - WSGI signature
        if environ.get("PATH_INFO") != "/slack/events":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"mimic listens on POST /slack/events\n"]
        return handler(environ, start_response)

    return make_server(host, port, wsgi, server_class=_ThreadingServer,
                       handler_class=_QuietHandler)


def serve_in_thread(server: WSGIServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="mimic-http",
                              daemon=True)
    thread.start()
    return thread
