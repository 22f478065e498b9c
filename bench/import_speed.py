"""Import speed: the full chitchat demo export (258k messages) into a fresh SQLite store.

    .venv/bin/python bench/import_speed.py [--profile]

Goal: at least 50,000 messages/s for the first import on a 2-core machine. The second import
of the same ZIP shows what an idempotent re-run costs. `--profile` prints cProfile's top
functions of the first import.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import tempfile
import time
from pathlib import Path

from mimic.core.store import Store, make_engine, upgrade
from mimic.exporter.demo_data import build_demo_export
from mimic.exporter.importer import import_export

GOAL = 50_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="cProfile the first import")
    parser.add_argument("--limit", type=int, default=None, help="only the first N conversations")
    args = parser.parse_args()

    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}, "
          f"Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="mimic-bench-") as tmp:
        zip_path = Path(tmp) / "chitchat-demo.zip"
        start = time.perf_counter()
        stats = build_demo_export(zip_path, limit_conversations=args.limit)
        print(f"demo export: {stats.messages:,} messages (+{stats.joins:,} joins, "
              f"{stats.bot_messages:,} bot posts) in {stats.day_files:,} day files, "
              f"{zip_path.stat().st_size / 1e6:.1f} MB, built in "
              f"{time.perf_counter() - start:.2f} s")

        engine = make_engine(f"sqlite:///{tmp}/bench.db")
        start = time.perf_counter()
        upgrade(engine)
        print(f"migrations: {time.perf_counter() - start:.2f} s (not counted below)")
        store = Store(engine)

        profiler = cProfile.Profile() if args.profile else None
        for label in ("first import", "re-import"):
            start = time.perf_counter()
            if profiler is not None and label == "first import":
                summary = profiler.runcall(import_export, store, zip_path)
            else:
                summary = import_export(store, zip_path)
            seconds = time.perf_counter() - start
            rate = summary.kept / seconds
            verdict = ""
            if label == "first import":
                verdict = " (goal met)" if rate >= GOAL else f" (BELOW the {GOAL:,}/s goal)"
            print(f"{label}: {summary.kept:,} messages kept, {summary.new:,} new, "
                  f"{sum(summary.dropped.values()):,} dropped, {seconds:.2f} s, "
                  f"{rate:,.0f} messages/s{verdict}")
        engine.dispose()

    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
