"""/mimic latency: signed slash commands against the real Bolt app in HTTP mode on this CPU.

Measures, from the POST of a signed `/mimic @person` to its reply arriving at the
response_url: one request at a time, then rounds of 20 concurrent requests (p50 and p99).
Also the cold load of a model version (weights and novelty index) into an empty cache.
Goal: p99 <= 500 ms with 20 concurrent requests, cold load <= 1 s.

Uses the models `bench.quality` trained (the trainer's default sizes, from the chitchat
workspace); without them it trains a base and one person first (about 3 minutes):

    .venv/bin/python -m bench.latency [--rounds 20] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.workspace import chitchat, machine
from mimic.bot.models import ModelCache
from mimic.trainer.corpus import BASE, targets_with_data
from mimic.trainer.device import pick_device
from mimic.trainer.registry import active_version
from mimic.trainer.train import train
from tests.fake_slack import TOKEN, FakeSlack
from tests.slack_client import SIGNING_SECRET, Catcher, slash

GOAL_P99_MS, GOAL_COLD_MS = 500, 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"mimic serve exited: {process.stderr.read() if process.stderr else ''}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)  # polling a port that is not up yet; nothing to wait on instead
    sys.exit("mimic serve did not start listening within a minute")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=Path("data/bench/quality"),
                   help="a chitchat workspace with trained models (default: bench.quality's)")
    p.add_argument("--rounds", type=int, default=20,
                   help="rounds of concurrent requests (20 x 20: p99 is not just the worst two)")
    p.add_argument("--concurrency", type=int, default=20, help="requests per round")
    p.add_argument("--temp", type=float, default=0.6, help="temperature asked for")
    args = p.parse_args()

    print(f"machine: {machine()}")
    store, settings = chitchat(args.folder, MIMIC_DEVICE="cpu")
    with store.session() as session:
        people = [t for t in targets_with_data(session, settings, settings.min_chars)
                  if t.kind == "user"]
        if active_version(session, BASE.key) is None:
            print("no trained models here: training a base (2 min) and one person (1 min)")
            train(store, settings, BASE, minutes=2)
            train(store, settings, people[0], minutes=1)
        target = next(t for t in people if active_version(session, t.key) is not None)
        row = active_version(session, target.key)
        session.expunge(row)

    cold = []
    for _ in range(3):
        start = time.perf_counter()
        loaded = ModelCache(settings.data_dir, device=pick_device("cpu")).get(row)
        cold.append(time.perf_counter() - start)
    config = loaded.model.config
    print(f"model: {target.label} v{row.version}, {config.num_layers}x{config.hidden_size} "
          f"LSTM, vocab {config.vocab_size}, novelty index {len(loaded.novelty):,} spans")
    print(f"cold load (weights + novelty index, empty cache): first {cold[0] * 1e3:.0f} ms, "
          f"then {min(cold[1:]) * 1e3:.0f} ms (goal <= {GOAL_COLD_MS} ms)")

    # The app runs as `mimic serve --http` in its own process, as in production: the load
    # generator here must not share its interpreter lock.
    slack = FakeSlack().start()  # `mimic serve` checks the token with auth.test
    port = free_port()
    env = {**os.environ, "DATABASE_URL": settings.database_url,
           "MIMIC_DATA_DIR": str(settings.data_dir), "MIMIC_DEVICE": "cpu",
           "SLACK_BOT_TOKEN": TOKEN, "SLACK_API_URL": slack.url,
           "SLACK_SIGNING_SECRET": SIGNING_SECRET, "MIMIC_RATE_LIMIT": "100000"}
    server = subprocess.Popen([sys.executable, "-m", "mimic.cli", "serve", "--http", str(port),
                               "--host", "127.0.0.1", "--no-scheduler"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/slack/events"
    wait_for_port(port, server)
    catcher = Catcher()
    lengths: list[int] = []

    def ask(user: str) -> tuple[float, float]:
        response_url = catcher.url()
        start = time.perf_counter()
        status, _ = slash(url, f"{target.label} temp={args.temp}", response_url, user=user)
        acked = time.perf_counter()
        assert status == 200, status
        body = catcher.wait(response_url)[0]
        path = response_url.split("127.0.0.1", 1)[1].split("/", 1)[1]
        arrived = catcher.arrived["/" + path][0]
        assert body["response_type"] == "in_channel", body["text"]
        lengths.append(len(body["text"].split("\n", 1)[1]))
        return acked - start, arrived - start

    ask("UWARM")
    single = [ask(f"USOLO{i}")[1] for i in range(10)]
    print(f"one at a time: p50 {statistics.median(single) * 1e3:.0f} ms, "
          f"max {max(single) * 1e3:.0f} ms over {len(single)} requests")
    acks, replies = [], []
    with ThreadPoolExecutor(args.concurrency) as pool:
        for r in range(args.rounds):
            users = [f"U{r}X{i}" for i in range(args.concurrency)]
            for ack, reply in pool.map(ask, users):
                acks.append(ack)
                replies.append(reply)
    p99 = percentile(replies, 0.99)
    print(f"{args.concurrency} concurrent x {args.rounds} rounds: reply p50 "
          f"{percentile(replies, 0.5) * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms "
          f"({'goal met' if p99 * 1e3 <= GOAL_P99_MS else 'GOAL MISSED'}, goal <= "
          f"{GOAL_P99_MS} ms); ack p99 {percentile(acks, 0.99) * 1e3:.0f} ms; "
          f"replies average {statistics.mean(lengths):.0f} chars")
    server.terminate()
    server.wait()
    catcher.stop()
    slack.stop()


if __name__ == "__main__":
    main()
