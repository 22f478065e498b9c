"""`mimic serve --processes 2` on SQLite: two processes on one port, one rate limit between
them, a dead one replaced, and SIGTERM stopping them all cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

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


def test_two_processes_share_a_port_and_a_rate_limit(world: tuple[Store, Settings],
                                                     fake_slack: FakeSlack,
                                                     tmp_path: Path) -> None:
    _store, settings = world
    fake_slack.add_channel("C1", "general")
    env = replica_env(settings.database_url, settings.data_dir, fake_slack.url)
    serve = subprocess.Popen([sys.executable, "-m", "mimic.cli", "serve", "--http", "0",
                              "--host", "127.0.0.1", "--no-scheduler", "--processes", "2"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    catcher = Catcher()

    def ask(user: str) -> str:
        response_url = catcher.url()
        assert slash(url, "@alice", response_url, user=user)[0] == 200
        return catcher.wait(response_url, timeout=60)[0]["text"]

    try:
        urls = listening(serve, 2)
        assert len(urls) == 2 and len(set(urls)) == 1, urls  # one port for both
        url = urls[0]
        assert len(children(serve.pid)) == 2
        with ThreadPoolExecutor(12) as pool:  # one person, twelve at once, both processes
            replies = list(pool.map(lambda _i: ask("U5"), range(12)))
        assert sum("mimicking" in r for r in replies) == 5
        assert sum("Easy there" in r for r in replies) == 7

        # One dies: the supervisor starts a replacement, and the two answer again.
        doomed = children(serve.pid)[0]
        os.kill(doomed, signal.SIGKILL)
        assert until(lambda: gone(doomed), 10)
        assert listening(serve, 1) == [url] and len(children(serve.pid)) == 2
        assert doomed not in children(serve.pid)
        assert all("mimicking" in ask(f"U6{i}") for i in range(4))
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        catcher.stop()


def test_the_processes_stop_when_their_supervisor_is_killed(world: tuple[Store, Settings],
                                                            fake_slack: FakeSlack,
                                                            tmp_path: Path) -> None:
    _store, settings = world
    env = replica_env(settings.database_url, settings.data_dir, fake_slack.url)
    serve = subprocess.Popen([sys.executable, "-m", "mimic.cli", "serve", "--http", "0",
                              "--host", "127.0.0.1", "--no-scheduler", "--processes", "2"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        assert len(listening(serve, 2)) == 2
        workers = children(serve.pid)
        assert len(workers) == 2
    finally:
        serve.kill()  # no clean stop of its own: nothing it could do about its workers
        serve.wait()
    assert until(lambda: all(gone(pid) for pid in workers), 60), "a server outlived it"
