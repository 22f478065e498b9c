"""Export-then-train runs: the nightly job, an admin's `/mimic retrain`, and `mimic retrain`.

The bot runs the job in a child process (`python -m mimic.bot.retrain`), so sampling keeps its
CPU and the GIL; the child reports progress as JSON lines. One run at a time, across processes:
the runner holds the retrain lock for as long as its child lives.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from mimic.core.config import Settings, get_settings
from mimic.core.lock import Busy, retrain_lock
from mimic.core.store import Store, open_store
from mimic.exporter.webapi import SlackExportError, export_workspace
from mimic.trainer.corpus import Target, TargetError, resolve
from mimic.trainer.train import Outcome, retrain_changed

log = logging.getLogger(__name__)
Event = dict[str, Any]
STDERR_KEPT = 2000  # characters of a failed child's stderr that reach the log


def summary(statuses: Counter[str]) -> str:
    """What a run did, counted by outcome status: every target is in exactly one count."""
    parts = [f"{statuses['active']} new models promoted"]
    parts += [f"{statuses[status]} {what}" for status, what in (
        ("kept", "kept the previous model"), ("skipped", "skipped"),
        ("failed", "failed (their active models are unchanged)")) if statuses[status]]
    return ", ".join(parts)


def retrain_job(store: Store, settings: Settings, target: Target | None,
                report: Callable[[Event], None]) -> list[Outcome]:
    """Incremental export (when a bot token is set), then retrain what changed; or, for one
    target, export and retrain just it. The caller holds the retrain lock.

    Outcome events carry `private`: the bot names no private channel in what it posts."""
    if settings.slack_bot_token is not None:
        report({"event": "progress", "text": "Exporting new messages from Slack…"})
        try:
            done = export_workspace(store, settings)
            report({"event": "progress", "text": f"Export done: {done.new:,} new or edited "
                    f"messages in {len(done.channels)} channels."})
        except SlackExportError as exc:
            report({"event": "progress", "text": f"Export skipped: {exc}"})
    report({"event": "progress", "text": "Training…"})
    outcomes = retrain_changed(
        store, settings, targets=[target] if target else None, force=target is not None,
        report=lambda o: report({"event": "outcome", "text": o.describe(), "status": o.status,
                                 "private": o.target.private}))
    report({"event": "done", "text": "Retraining finished: "
            + summary(Counter(o.status for o in outcomes)) + "."})
    return outcomes


class RetrainRunner:
    """Runs the job in a child process under the retrain lock. `close()` stops a run in
    progress and joins its thread: `mimic serve` calls it on the way out."""

    def __init__(self, settings: Settings, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.env = env  # for the child; defaults to this process's environment
        self.last_result: list[Event] = []
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen[str] | None = None
        self._closing = threading.Event()
        self._guard = threading.Lock()  # between a child starting and close() stopping it

    def command(self, target: Target | None) -> list[str]:
        return [sys.executable, "-m", "mimic.bot.retrain", *([target.ref] if target else [])]

    def start(self, target: Target | None, on_event: Callable[[Event], None]) -> bool:
        """Start a run in the background; False (and nothing started) if one is going.
        Raises what taking the lock raised (the database is down, say)."""
        if self._closing.is_set():
            return False
        started = threading.Event()
        outcome: list[bool | Exception] = []

        def work() -> None:
            try:
                with retrain_lock(self.settings, on_lost=self._lock_lost):
                    outcome.append(True)
                    started.set()
                    self._run_child(target, on_event)
            except Busy:
                outcome.append(False)
            except Exception as exc:  # noqa: BLE001 - handed to the caller, or logged
                if started.is_set():
                    log.exception("the retrain run failed")
                else:
                    outcome.append(exc)
            finally:
                started.set()

        thread = threading.Thread(target=work, name="mimic-retrain")
        thread.start()
        started.wait()
        if outcome[0] is True:
            self._thread = thread
            return True
        thread.join()
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        return False

    def run(self, target: Target | None, on_event: Callable[[Event], None]) -> bool:
        """Run in this thread (the scheduler's); False if another run holds the lock."""
        if self._closing.is_set():
            return False
        try:
            with retrain_lock(self.settings, on_lost=self._lock_lost):
                self._run_child(target, on_event)
                return True
        except Busy:
            return False

    def close(self, timeout: float = 30) -> None:
        """Stop the run in progress (its child is terminated: the trainer keeps what it has
        published and promotes nothing half-done) and join its thread."""
        self._closing.set()
        self._stop_child()
        if self._thread is not None:
            self._thread.join(timeout)

    def _stop_child(self) -> None:
        with self._guard:
            child = self._child
        if child is not None and child.poll() is None:
            child.terminate()

    def _lock_lost(self) -> None:
        # Its database connection closed: another process may take the lock and train, and
        # two runs must never train at once. The run ends as failed; the next one redoes it.
        log.error("lost the retrain lock: stopping this run")
        self._stop_child()

    def _run_child(self, target: Target | None, on_event: Callable[[Event], None]) -> None:
        events: list[Event] = []
        env = {**(self.env if self.env is not None else os.environ), "PYTHONUNBUFFERED": "1"}
        # stderr goes to a file, not a pipe: a child that writes more than a pipe holds while
        # we read its stdout would block on it forever, and we with it.
        # stdin is a pipe nobody writes to: it closes when this process dies, however it dies,
        # and the child then stops (see main) rather than train on without the lock.
        with tempfile.TemporaryFile("w+") as errors, subprocess.Popen(
                self.command(target), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=errors, text=True, env=env) as child:
            with self._guard:  # close() either sees this child or we see it closing
                self._child = child
                closing = self._closing.is_set()
            if closing:
                child.terminate()
            assert child.stdout is not None
            for line in child.stdout:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue  # stray output from a library, not an event
                if not isinstance(event, dict) or "event" not in event:
                    continue
                events.append(event)
                on_event(event)
            child.wait()
            with self._guard:
                self._child = None
            errors.seek(0)
            stderr = errors.read()
        if child.returncode != 0:
            log.error("retrain run failed (exit %s): %s", child.returncode,
                      stderr[-STDERR_KEPT:])
            statuses = Counter(e.get("status") for e in events if e["event"] == "outcome")
            unchanged = ("The active models are unchanged." if not statuses["active"] else
                         f"{statuses['active']} new models were promoted before it stopped; "
                         "the others are unchanged.")
            event = {"event": "failed", "text": "Retraining failed; the admins can find the "
                     f"details in mimic's log. {unchanged}"}
            events.append(event)
            on_event(event)
        self.last_result = events


def _exit_with_parent() -> None:
    """End this child when the bot that started it is gone (its end of stdin closes): the
    retrain lock died with the bot, so another run may start, and two must not train at
    once. What was published stays (the registry writes whole versions or nothing)."""
    sys.stdin.read()
    print("the bot that started this run is gone: stopping", file=sys.stderr, flush=True)
    os._exit(1)  # now, from this thread: no interpreter shutdown under a training thread


def main(argv: list[str] | None = None) -> None:
    """The child: one run, events as JSON lines on stdout. The parent holds the lock."""
    parser = argparse.ArgumentParser(description="One export-and-retrain run, for the bot.")
    parser.add_argument("target", nargs="?", help="only this @person or #channel (by id)")
    args = parser.parse_args(argv)
    threading.Thread(target=_exit_with_parent, name="mimic-parent-watch", daemon=True).start()
    settings = get_settings()
    store = open_store(settings.database_url)
    target = None
    if args.target:
        try:
            with store.session() as session:
                target = resolve(session, args.target)
        except TargetError as exc:
            print(json.dumps({"event": "failed", "text": str(exc)}), flush=True)
            return
    retrain_job(store, settings, target, lambda e: print(json.dumps(e), flush=True))


if __name__ == "__main__":
    main()
