"""`mimic serve --processes 2` on SQLite: two processes on one port, connections handed out in
turn, one rate limit between them, a dead one replaced, and SIGTERM stopping them all
cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mimic.bot.processes import READY, Supervisor, Worker
from mimic.core.config import Settings
from mimic.core.store import Store
from tests.fake_slack import FakeSlack
from tests.replicas import children, replica_env, until
from tests.slack_client import Catcher, slash

pytestmark = pytest.mark.slow


def listening(serve: subprocess.Popen[str], count: int) -> list[str]:
    """The URLs the next `count` processes of `serve` say they listen on (fewer if it ends)."""
    assert serve.stdout is not None
    urls: list[str] = []
    for line in serve.stdout:
        if "Listening on" in line:
            urls.append(line.split("Listening on ")[1].strip())
            if len(urls) == count:
                break
    return urls


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_connections_are_handed_out_in_turn_to_the_ready_processes() -> None:
    """The supervisor's dispatch, over real sockets: a burst is split evenly, a process not
    ready yet gets nothing while others are, and one that died is passed over."""
    supervisor = Supervisor([], 3)
    ends = []
    for _ in range(3):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        supervisor.workers.append(Worker(None, ours))  # type: ignore[arg-type]
        ends.append(theirs)
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()

    def burst(count: int, turn: int = 0) -> tuple[list[int], int]:
        """Hand `count` connections; how many each worker got, and the next turn."""
        clients = [socket.create_connection(address) for _ in range(count)]
        for _ in clients:
            connection, _peer = listener.accept()
            with connection:
                turn = supervisor._hand(connection, turn)
        got = []
        for end in ends:
            received = 0
            with contextlib.suppress(BlockingIOError, OSError):
                end.setblocking(False)  # (3.11's recv_fds drops its flags argument)
                while True:
                    _message, fds, _flags, _address = socket.recv_fds(end, 1, 1)
                    for fd in fds:
                        os.close(fd)
                    received += len(fds)
            got.append(received)
        for client in clients:
            client.close()
        return got, turn

    try:
        ends[0].send(READY)
        ends[1].send(READY)
        got, turn = burst(10)
        assert got == [5, 5, 0]  # the third is not ready yet
        ends[2].send(READY)
        got, turn = burst(9, turn)
        assert got == [3, 3, 3]
        ends[1].close()  # the second dies
        got, turn = burst(6, turn)
        assert got[0] + got[2] == 6 and abs(got[0] - got[2]) <= 1
        # The first stops taking connections: once its queue is full, the third gets them.
        stuck = supervisor.workers[0].handover
        assert stuck is not None
        with contextlib.suppress(BlockingIOError):
            while True:
                stuck.send(b"x", socket.MSG_DONTWAIT)
        got, turn = burst(4, turn)
        assert got == [0, 0, 4]
    finally:
        listener.close()
        for worker in supervisor.workers:
            assert worker.handover is not None
            worker.handover.close()
        for end in ends:
            end.close()


@contextlib.contextmanager
def two_processes(settings: Settings, fake_slack: FakeSlack, tmp_path: Path,
                  **env: str) -> Iterator[subprocess.Popen[str]]:
    """`mimic serve --processes 2` over HTTP on a free port; killed if the test left it up."""
    serve = subprocess.Popen([sys.executable, "-m", "mimic.cli", "serve", "--http", "0",
                              "--host", "127.0.0.1", "--no-scheduler", "--processes", "2"],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, env={**replica_env(settings.database_url,
                                                           settings.data_dir, fake_slack.url),
                                             **env})
    try:
        yield serve
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


@contextlib.contextmanager
def asking(url: list[str]) -> Iterator[Callable[[str], str]]:
    """ask(user): a signed `/mimic @alice` from `user` to url[0], and the reply's text."""
    catcher = Catcher()

    def ask(user: str) -> str:
        response_url = catcher.url()
        assert slash(url[0], "@alice", response_url, user=user)[0] == 200
        return catcher.wait(response_url, timeout=60)[0]["text"]

    try:
        yield ask
    finally:
        catcher.stop()


def test_two_processes_share_a_port_and_a_rate_limit(world: tuple[Store, Settings],
                                                     fake_slack: FakeSlack,
                                                     tmp_path: Path) -> None:
    _store, settings = world
    fake_slack.add_channel("C1", "general")
    url: list[str] = []
    with two_processes(settings, fake_slack, tmp_path) as serve, asking(url) as ask:
        url += listening(serve, 2)
        assert len(url) == 2 and len(set(url)) == 1, url  # one port for both
        assert len(children(serve.pid)) == 2
        with ThreadPoolExecutor(12) as pool:  # one person, twelve at once, both processes
            replies = list(pool.map(lambda _i: ask("U5"), range(12)))
        assert sum("mimicking" in r for r in replies) == 5
        assert sum("Easy there" in r for r in replies) == 7

        # One dies: the supervisor starts a replacement, the other answers what arrives
        # while it starts, and then the two answer again.
        doomed = children(serve.pid)[0]
        os.kill(doomed, signal.SIGKILL)
        assert until(lambda: doomed not in children(serve.pid)
                     and len(children(serve.pid)) == 2, 10)
        assert all("mimicking" in ask(f"U7{i}") for i in range(3))
        assert listening(serve, 1) == url[:1] and len(children(serve.pid)) == 2
        assert doomed not in children(serve.pid)
        assert all("mimicking" in ask(f"U6{i}") for i in range(4))
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0


def test_the_processes_stop_when_their_supervisor_is_killed(world: tuple[Store, Settings],
                                                            fake_slack: FakeSlack,
                                                            tmp_path: Path) -> None:
    _store, settings = world
    with two_processes(settings, fake_slack, tmp_path) as serve:
        assert len(listening(serve, 2)) == 2
        workers = children(serve.pid)
        assert len(workers) == 2
        serve.kill()  # no clean stop of its own: nothing it could do about its workers
        serve.wait()
    assert until(lambda: all(gone(pid) for pid in workers), 60), "a server outlived it"


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_hostile_connections_through_the_hand_over_leave_both_processes_serving(
        world: tuple[Store, Settings], fake_slack: FakeSlack, tmp_path: Path) -> None:
    """Clients that reset at once, send half a request and go silent, or send garbage, all
    pass through the supervisor: each is refused or dropped, no descriptor is left open in
    any process, and a signed `/mimic` is answered by both processes afterwards."""
    _store, settings = world
    fake_slack.add_channel("C1", "general")
    url: list[str] = []
    with two_processes(settings, fake_slack, tmp_path, MIMIC_RATE_LIMIT="1000") as serve, \
            asking(url) as ask:
        url += listening(serve, 2)
        assert len(url) == 2
        port = int(url[0].split(":")[2].split("/")[0])
        pids = [serve.pid, *children(serve.pid)]
        assert len(pids) == 3
        assert "mimicking" in ask("U1")  # warm: the model is loaded where it answered
        before = {pid: _open_fds(pid) for pid in pids}
        for _ in range(60):  # connect, then reset before a byte is sent
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        silent = []
        for _ in range(20):  # half a request, then nothing (dropped after the read timeout)
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /slack/events HTTP/1.1\r\nContent-Le")
            silent.append(sock)
        for junk, expected in (
                # TLS to a plain-HTTP port: no request line ever ends, dropped when silent
                (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40), b""),
                (b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.0 404"),
                (b"\xff" * 3000 + b"\r\n\r\n", b"400"),
                (b"POST /slack/events HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
                 b"HTTP/1.0 413")):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(junk)
                sock.settimeout(15)
                answer = b""
                with contextlib.suppress(ConnectionError):
                    while chunk := sock.recv(65536):
                        answer += chunk
                assert (expected in answer[:200] if expected else answer == b""), answer[:200]
                assert b"Traceback" not in answer
        # Meanwhile, and after, real requests are answered, by both processes in turn.
        assert all("mimicking" in ask(f"U2{i}") for i in range(4))
        for sock in silent:
            sock.close()
        assert children(serve.pid) == pids[1:], "a process died"
        # What those connections held is given back (a few descriptors of slack: the pools).
        assert until(lambda: all(_open_fds(pid) <= before[pid] + 4 for pid in pids), 30), \
            ({pid: _open_fds(pid) for pid in pids}, before)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0
