"""/mimic latency: signed slash commands against the real Bolt app in HTTP mode on this CPU.

Measures, from the POST of a signed `/mimic @person` to its reply arriving at the
response_url: one request at a time, then rounds of 20 concurrent requests, each round for 20
different people (p50 and p99, and the times by the replies' length: a long reply takes a
sampler step for each character); and the memory of `mimic serve` once it has answered them all.
Also the cold load of the workspace model (weights, novelty index and lexicon) into an empty
cache, and rounds of 20 concurrent mentions (`@mimic be @person` in a thread of three real
messages), from the event's POST to the threaded reply's chat.postMessage; and 4-turn
conversations (`/mimic @a @b turns=4`). Goals: p99 <= 500 ms with 20 concurrent requests, cold
load <= 1 s, mention p99 <= 700 ms, a 4-turn conversation <= 1.5 s.

Uses the workspace model `bench.quality` trained (the trainer's default size, on the chitchat
workspace); without one it trains one first (3 minutes):

    .venv/bin/python -m bench.latency [--rounds 20] [--concurrency 20] [--processes 2]
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
from urllib.parse import urlsplit

from sqlalchemy import select

from bench.workspace import chitchat, machine
from mimic.bot.models import ModelCache
from mimic.core.config import Settings
from mimic.core.store import Channel, Store
from mimic.trainer.corpus import BASE, Target, recent
from mimic.trainer.device import pick_device
from mimic.trainer.registry import active_version
from mimic.trainer.report import covered_people
from mimic.trainer.sampler import DEFAULT_TEMPERATURE
from mimic.trainer.train import train
from tests.fake_slack import TOKEN, FakeSlack
from tests.replicas import children
from tests.slack_client import SIGNING_SECRET, Catcher, event, slash

GOAL_P99_MS, GOAL_COLD_MS, GOAL_MENTION_MS, GOAL_TALK_MS = 500, 1000, 700, 1500


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(process: subprocess.Popen, processes: int = 1) -> None:
    """Until each of `mimic serve`'s `processes` says it listens (its stdout)."""
    assert process.stdout is not None
    ready = 0
    for line in process.stdout:
        ready += "Listening on" in line
        if ready == processes:
            return
    sys.exit("mimic serve exited before it listened: see its log above")


def memory_kb(pid: int) -> tuple[int, int]:
    """Resident and peak kB of `pid` and its child processes (`--processes`' workers)."""
    rss = hwm = 0
    for process in (pid, *children(pid)):
        status = Path(f"/proc/{process}/status").read_text().splitlines()
        rss += int(next(line.split()[1] for line in status if line.startswith("VmRSS")))
        hwm += int(next(line.split()[1] for line in status if line.startswith("VmHWM")))
    return rss, hwm


def stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the ")" closing its name: the first is field 3."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) `pid` and its child processes have used so far, also the
    children that have ended (a PostgreSQL server's backends come and go)."""
    # utime, stime, cutime, cstime: fields 14-17; the last two are its children's that it has
    # waited for.
    ticks = sum(int(f) for process in (pid, *children(pid)) for f in stat(process)[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def recent_texts(store: Store, settings: Settings, target: Target) -> list[tuple[str, str]]:
    with store.session() as session:
        return recent(session, settings, target, 2)


def usage(processes: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each named group of processes (with their children), of this
    process (the load generator, with fake Slack and the reply catcher), and the wall clock."""
    return {**{who: sum(cpu_s(pid) for pid in pids) for who, pids in processes.items()},
            "the load generator": time.process_time(), "wall": time.perf_counter()}


def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What each side used between two `usage()` readings, and the wall clock's time."""
    return {who: after[who] - before[who] for who in before}


def cpu_line(used: dict[str, float], requests: int) -> str:
    """Where the cores went (`spent()`, or several added up): whether the rounds were bound by
    the cores (and whose work filled them) or by something serial."""
    cpu = {who: seconds for who, seconds in used.items() if who != "wall"}
    busy = sum(cpu.values()) / used["wall"] / (os.cpu_count() or 1)
    each = ", ".join(f"{who} {seconds / requests * 1e3:.1f} ms" for who, seconds in cpu.items())
    return f"  CPU a request: {each}; cores busy {busy:.0%} of {used['wall']:.1f} s"


def by_length(lengths: list[int], times: list[float]) -> str:
    """The replies' times by their length: each character is a step of the sampler, so the
    long replies are the slow ones (what sets the p99)."""
    bands = []
    for low, high in ((0, 40), (40, 80), (80, 140), (140, None)):
        took = [t for n, t in zip(lengths, times, strict=True)
                if n >= low and (high is None or n < high)]
        if took:
            bands.append(f"{low}{f'-{high - 1}' if high else '+'} chars: {len(took)}, mean "
                         f"{statistics.mean(took) * 1e3:.0f} ms, max {max(took) * 1e3:.0f} ms")
    return "  by reply length: " + "; ".join(bands)


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
    p.add_argument("--processes", type=int, default=1,
                   help="`mimic serve --processes N`: N server processes on one port")
    p.add_argument("--temp", type=float, default=DEFAULT_TEMPERATURE,
                   help=f"temperature asked for (default {DEFAULT_TEMPERATURE:g}, /mimic's)")
    args = p.parse_args()

    print(f"machine: {machine()}")
    store, settings = chitchat(args.folder, MIMIC_DEVICE="cpu")
    with store.session() as session:
        if active_version(session, BASE.key) is None:
            print("no trained model here: training the workspace model (3 min)")
            train(store, settings, BASE, minutes=3)
        row = active_version(session, BASE.key)
        assert row is not None
        session.expunge(row)
    people = [t for t, _chars in covered_people(store, settings)][:100]

    cold = []
    for _ in range(3):
        start = time.perf_counter()
        loaded = ModelCache(settings.data_dir, device=pick_device("cpu")).get(row)
        cold.append(time.perf_counter() - start)
    config = loaded.model.config
    print(f"model: the workspace model v{row.version}, {config.num_layers}x{config.hidden_size} "
          f"LSTM, {config.people - 1} people, vocab {config.vocab_size}, novelty index "
          f"{len(loaded.novelty):,} spans")
    print(f"cold load (weights, novelty index, lexicon; empty cache): first "
          f"{cold[0] * 1e3:.0f} ms, then {min(cold[1:]) * 1e3:.0f} ms (goal <= {GOAL_COLD_MS} ms)")

    # The app runs as `mimic serve --http` in its own process, as in production: the load
    # generator here must not share its interpreter lock.
    slack = FakeSlack(page_size=200).start()  # `mimic serve` checks the token (auth.test)
    with store.session() as session:  # a real public channel, so replies are said in it
        name, cid = session.execute(select(Channel.name, Channel.id)
                                    .where(~Channel.is_private, ~Channel.is_dm)).first()
    slack.add_channel(cid, name)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": settings.database_url,
           "MIMIC_DATA_DIR": str(settings.data_dir), "MIMIC_DEVICE": "cpu",
           "SLACK_BOT_TOKEN": TOKEN, "SLACK_API_URL": slack.url,
           "SLACK_SIGNING_SECRET": SIGNING_SECRET, "MIMIC_RATE_LIMIT": "100000"}
    server = subprocess.Popen([sys.executable, "-m", "mimic.cli", "serve", "--http", str(port),
                               "--host", "127.0.0.1", "--no-scheduler",
                               "--processes", str(args.processes)], env=env,
                              stdout=subprocess.PIPE, text=True)  # its log (stderr): here
    catcher = Catcher()
    try:
        url = f"http://127.0.0.1:{port}/slack/events"
        wait_listening(server, args.processes)

        def ask(job: tuple[str, int]) -> tuple[float, float, int]:
            user, person = job
            response_url = catcher.url()
            start = time.perf_counter()
            status, _ = slash(url, f"{people[person % len(people)].label} temp={args.temp}",
                              response_url, user=user)
            acked = time.perf_counter()
            assert status == 200, status
            body = catcher.wait(response_url)[0]
            path = response_url.split("127.0.0.1", 1)[1].split("/", 1)[1]
            arrived = catcher.arrived["/" + path][0]
            assert body["response_type"] == "in_channel", body["text"]
            return acked - start, arrived - start, len(body["text"].split("\n", 1)[1])

        ask(("UWARM", 0))
        single = [ask((f"USOLO{i}", i))[1] for i in range(10)]
        print(f"one at a time: p50 {statistics.median(single) * 1e3:.0f} ms, "
              f"max {max(single) * 1e3:.0f} ms over {len(single)} requests")
        acks, replies, lengths = [], [], []
        used = usage({"mimic serve": [server.pid]})
        with ThreadPoolExecutor(args.concurrency) as pool:
            for r in range(args.rounds):
                jobs = [(f"U{r}X{i}", r * args.concurrency + i) for i in range(args.concurrency)]
                for ack, reply, length in pool.map(ask, jobs):
                    acks.append(ack)
                    replies.append(reply)
                    lengths.append(length)
        p99 = percentile(replies, 0.99)
        print(f"{args.concurrency} concurrent x {args.rounds} rounds: reply p50 "
              f"{percentile(replies, 0.5) * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms "
              f"({'goal met' if p99 * 1e3 <= GOAL_P99_MS else 'GOAL MISSED'}, goal <= "
              f"{GOAL_P99_MS} ms); ack p99 {percentile(acks, 0.99) * 1e3:.0f} ms; "
              f"replies average {statistics.mean(lengths):.0f} chars")
        print(cpu_line(spent(used, usage({"mimic serve": [server.pid]})), len(replies)))
        print(by_length(lengths, replies))

        # Mentions: each in a thread of three real messages by other people, answered in the
        # thread after reading it (conversations.replies), timed to the chat.postMessage.
        channel = next(iter(slack.channels))
        texts = [text for t in people[:60] for _author, text in recent_texts(store, settings, t)]

        def mention(job: tuple[int, int]) -> float:
            r, i = job
            person = people[(r * args.concurrency + i) % len(people)]
            authors = [people[(r * args.concurrency + i + k + 1) % len(people)] for k in range(3)]
            parent = slack.post(channel, texts[(r + i) % len(texts)], authors[0].ident)
            for k, author in enumerate(authors[1:]):
                slack.post(channel, texts[(r + i + k + 1) % len(texts)], author.ident,
                           thread_ts=parent)
            text = f"<@UBOT> be <@{person.ident}>"
            ts = slack.post(channel, text, f"U{r}M{i}", thread_ts=parent)
            start = time.perf_counter()
            assert event(url, {"type": "app_mention", "user": f"U{r}M{i}", "text": text, "ts": ts,
                               "channel": channel, "thread_ts": parent, "event_ts": ts})[0] == 200
            return slack.wait_posted(parent) - start

        mentions: list[float] = []
        used = usage({"mimic serve": [server.pid]})
        with ThreadPoolExecutor(args.concurrency) as pool:
            for r in range(args.rounds):
                mentions += pool.map(mention, [(r, i) for i in range(args.concurrency)])
        p99 = percentile(mentions, 0.99)
        print(f"mentions, {args.concurrency} concurrent x {args.rounds} rounds (each reads its "
              f"thread): threaded reply p50 {percentile(mentions, 0.5) * 1e3:.0f} ms, p99 "
              f"{p99 * 1e3:.0f} ms ({'goal met' if p99 * 1e3 <= GOAL_MENTION_MS else 'GOAL MISSED'}"
              f", goal <= {GOAL_MENTION_MS} ms)")
        print(cpu_line(spent(used, usage({"mimic serve": [server.pid]})), len(mentions)))

        # Conversations, one at a time: two people, four turns, each turn reading the ones before.
        talks = []
        for i in range(10):
            a, b = people[(2 * i) % len(people)], people[(2 * i + 1) % len(people)]
            response_url = catcher.url()
            start = time.perf_counter()
            status, _ = slash(url, f"{a.label} {b.label} turns=4", response_url, user=f"UTALK{i}")
            assert status == 200, status
            body = catcher.wait(response_url)[0]
            assert body["response_type"] == "in_channel", body["text"]
            talks.append(catcher.arrived[urlsplit(response_url).path][0] - start)
        worst = max(talks)
        print(f"4-turn conversations, one at a time: p50 {statistics.median(talks) * 1e3:.0f} ms, "
              f"max {worst * 1e3:.0f} ms over {len(talks)} "
              f"({'goal met' if worst * 1e3 <= GOAL_TALK_MS else 'GOAL MISSED'}, goal <= "
              f"{GOAL_TALK_MS} ms)")
        rss, hwm = memory_kb(server.pid)
        where = f" in {args.processes} processes" if args.processes > 1 else ""
        print(f"mimic serve memory after {len(replies) + 11} replies: {rss / 1024:.0f} MB "
              f"resident (peak {hwm / 1024:.0f} MB){where}")
    finally:  # whatever failed, nothing it started outlives it
        server.terminate()
        server.wait()
        catcher.stop()
        slack.stop()


if __name__ == "__main__":
    main()
