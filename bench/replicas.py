"""Two `mimic serve --http` replicas on one PostgreSQL against one: does the second replica
cost anything in /mimic's p99? And what the coordination costs: the shared rate limit per
request, and how long a standby replica takes to run the nightly schedule once the one that
ran it dies (kill -9).

Copies bench.quality's chitchat workspace (SQLite, trained) into a fresh PostgreSQL database,
then times signed `/mimic @person` requests, from the POST to the reply at its response_url:
rounds of 20 concurrent requests to one replica, of 20 spread over two, and of 40 spread over
two (a load balancer's round robin), taking turns round by round. Each says where the CPU went
(the replicas, PostgreSQL, and this process: the load generator, fake Slack and the reply
catcher) and how many connections the replicas opened to PostgreSQL. `--pin` runs each replica
on one core of its own, as if on a machine of its own. Needs a PostgreSQL server:
tests/with-postgres.sh starts a throwaway one.

    bash tests/with-postgres.sh .venv/bin/python -m bench.replicas [--rounds 40] [--pin]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.engine import make_url

from bench.latency import cpu_line, percentile, spent, stat, usage
from bench.workspace import chitchat, copied_to, machine
from mimic.bot.replies import RateLimiter, SharedRateLimiter
from mimic.core.store import Channel
from mimic.trainer.report import covered_people
from tests.fake_slack import FakeSlack
from tests.replicas import Replica, replica_env, until
from tests.slack_client import Catcher, slash


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=Path("data/bench/quality"),
                   help="a chitchat workspace with a trained model (default: bench.quality's)")
    p.add_argument("--rounds", type=int, default=40,
                   help="rounds of concurrent requests (40: the p99 of 20 x 40 is the 8th worst "
                        "reply, not the 4th)")
    p.add_argument("--pin", action="store_true",
                   help="run replica 1 on the first core only and replica 2 on the second "
                        "(`taskset`), as if each had a machine; PostgreSQL and this process "
                        "still run anywhere")
    args = p.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if args.pin and len(cores) < 2:
        sys.exit(f"--pin needs two cores; this process may use {len(cores)}.")
    server_url = os.environ.get("MIMIC_TEST_POSTGRES_URL")
    if not server_url:
        sys.exit("No PostgreSQL: run `bash tests/with-postgres.sh .venv/bin/python -m "
                 "bench.replicas` (or set MIMIC_TEST_POSTGRES_URL).")
    print(f"machine: {machine()}")
    sqlite, settings = chitchat(args.folder, refresh=False, MIMIC_DEVICE="cpu")
    people = [t for t, _chars in covered_people(sqlite, settings)][:100]
    if not people:
        sys.exit(f"No trained workspace model in {args.folder}: run `python -m bench.quality`.")

    name = f"mimic_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(make_url(server_url).set(drivername="postgresql+psycopg"),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    slack = FakeSlack(page_size=200).start()
    catcher = Catcher()
    replicas: list[Replica] = []
    try:
        start = time.perf_counter()
        store = copied_to(sqlite, url)
        print(f"workspace copied into PostgreSQL in {time.perf_counter() - start:.0f} s")
        with store.session() as session:
            postgres = parent(session.scalar(text("SELECT pg_backend_pid()")))
            channel, cid = session.execute(select(Channel.name, Channel.id).where(
                ~Channel.is_private, ~Channel.is_dm)).first()
        slack.add_channel(cid, channel)

        limits = {"in memory": RateLimiter(5), "in PostgreSQL": SharedRateLimiter(store, 5)}
        for what, limiter in limits.items():
            costs = []
            for i in range(300):
                begun = time.perf_counter()
                limiter.allow(f"UB{i}")
                costs.append(time.perf_counter() - begun)
            print(f"rate limit {what}: p50 {statistics.median(costs) * 1e3:.2f} ms, p99 "
                  f"{percentile(costs, 0.99) * 1e3:.2f} ms per request")

        env = replica_env(url, settings.data_dir.resolve(), slack.url, MIMIC_RATE_LIMIT="100000",
                          MIMIC_RETRAIN_CRON="0 3 * * *")
        folder = Path(os.environ.get("TMPDIR", "/tmp"))
        replicas = [Replica(env, folder / f"mimic-bench-replica-{i}.log", scheduler=True,
                            core=cores[i] if args.pin else None) for i in range(2)]
        processes = {"replicas": [r.process.pid for r in replicas], "PostgreSQL": [postgres]}
        if args.pin:
            print(f"replicas pinned to cores {cores[0]} and {cores[1]}")
        for replica in replicas:
            replica.wait_listening()

        def ask(job: tuple[Replica, str, int]) -> float:
            replica, user, person = job
            response_url = catcher.url()
            begun = time.perf_counter()
            status, _ = slash(replica.url, f"{people[person % len(people)].label}",
                              response_url, user=user, channel=cid)
            assert status == 200, status
            body = catcher.wait(response_url, timeout=120)[0]
            assert body["response_type"] == "in_channel", body["text"]
            return catcher.arrived[urlsplit(response_url).path][0] - begun

        for replica in replicas:  # warm: each has its model loaded and its queries planned
            for i in range(3):
                ask((replica, f"UWARM{i}", i))
        # Round by round in turn, so that all three see the same host: a 2-core VM's pace
        # drifts by more than the difference sought between runs of a few seconds each.
        phases = {"1 replica, 20 concurrent": (replicas[:1], 20),
                  "2 replicas, 20 concurrent": (replicas, 20),
                  "2 replicas, 40 concurrent": (replicas, 40)}
        times: dict[str, list[float]] = {label: [] for label in phases}
        used = {label: dict.fromkeys(usage(processes), 0.0) for label in phases}
        opened = dict.fromkeys(phases, 0)
        with ThreadPoolExecutor(40) as pool:
            for r in range(args.rounds):
                for label, (serving, concurrency) in phases.items():
                    jobs = [(serving[i % len(serving)], f"U{label[0]}{concurrency}R{r}X{i}",
                             r * concurrency + i) for i in range(concurrency)]
                    before, connected = usage(processes), sessions(admin, name)
                    times[label] += pool.map(ask, jobs)
                    for who, seconds in spent(before, usage(processes)).items():
                        used[label][who] += seconds
                    opened[label] += sessions(admin, name) - connected
        for label, took in times.items():
            print(f"{label} x {args.rounds} rounds: p50 {percentile(took, 0.5) * 1e3:.0f} ms, "
                  f"p99 {percentile(took, 0.99) * 1e3:.0f} ms, "
                  f"{len(took) / used[label]['wall']:.1f} replies/s")
            print(f"{cpu_line(used[label], len(took))}; {opened[label]} PostgreSQL connections "
                  "opened")
        cost = (percentile(times["2 replicas, 40 concurrent"], 0.99)
                / percentile(times["1 replica, 20 concurrent"], 0.99) - 1)
        print(f"the second replica's cost in p99 (40 over two against 20 on one): {cost:+.0%} "
              f"(goal: nothing)")

        # The nightly schedule's hand-over: the elected replica dies; the other's next try
        # for the scheduler lock (every 5 s) finds it free.
        (leader,) = [r for r in replicas if "this process runs the nightly" in r.logged()]
        (standby,) = [r for r in replicas if r is not leader]
        begun = time.perf_counter()
        leader.kill()
        taken = until(lambda: "this process runs the nightly" in standby.logged(), 60)
        print(f"scheduler hand-over after kill -9 of its replica: "
              f"{time.perf_counter() - begun:.1f} s" if taken else "no hand-over within 60 s")
    finally:
        for replica in replicas:
            replica.stop()
        catcher.stop()
        slack.stop()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def sessions(admin: Engine, database: str) -> int:
    """Connections ever opened to `database` (a pool that closes and reopens them makes the
    server start a process for each)."""
    with admin.connect() as conn:
        return conn.scalar(text("SELECT sessions FROM pg_stat_database WHERE datname = :name"),
                           {"name": database})


def parent(pid: int) -> int:
    """The parent of `pid` (a PostgreSQL backend's is the server, whose children are all its
    processes)."""
    return int(stat(pid)[1])


if __name__ == "__main__":
    main()
