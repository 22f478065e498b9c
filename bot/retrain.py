"""Export-then-train runs: the nightly job, an admin's `/mimic retrain`, and `mimic retrain`.

The bot runs the job in a child process (`mimic retrain --events`), so sampling keeps its CPU
and the GIL; the child reports progress as JSON lines. One run at a time, across processes:
the runner holds the retrain lock for as long as its child lives.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from exporter.webapi import SlackExportError, export_workspace
from mimic.config import Settings
from mimic.lock import Busy, retrain_lock
from mimic.store import Store
from trainer.corpus import Target
from trainer.train import retrain_changed

log = logging.getLogger(__name__)
Event = dict[str, Any]


def retrain_job(store: Store, settings: Settings, target: Target | None,
                report: Callable[[Event], None]) -> None:
    """Incremental export (when a bot token is set), then retrain what changed; or, for one
    target, export and retrain just it. The caller holds the retrain lock."""
    if settings.slack_bot_token is not None:
        report({"event": "progress", "text": "Exporting new messages from Slack…"})
        try:
            summary = export_workspace(store, settings)
            report({"event": "progress", "text": f"Export done: {summary.new:,} new or edited "
                    f"messages in {len(summary.channels)} channels."})
        except SlackExportError as exc:
            report({"event": "progress", "text": f"Export skipped: {exc}"})
    report({"event": "progress", "text": "Training…"})
    outcomes = retrain_changed(
        store, settings, targets=[target] if target else None, force=target is not None,
        report=lambda o: report({"event": "outcome", "text": o.describe(), "status": o.status}))
    promoted = sum(o.status == "active" for o in outcomes)
    report({"event": "done", "text": f"Retraining finished: {promoted} new models promoted, "
            f"{len(outcomes) - promoted} kept or skipped."})


class RetrainRunner:
    def __init__(self, settings: Settings, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.env = env  # for the child; defaults to this process's environment
        self.last_result: list[Event] = []

    def command(self, target: Target | None) -> list[str]:
        return [sys.executable, "-m", "mimic.cli", "retrain", "--events", "--lock-held",
                *([target.ref] if target else [])]

    def start(self, target: Target | None, on_event: Callable[[Event], None]) -> bool:
        """Start a run in the background; False (and nothing started) if one is going."""
        started = threading.Event()
        outcome: list[bool] = []

        def work() -> None:
            try:
                with retrain_lock(self.settings.data_dir):
                    outcome.append(True)
                    started.set()
                    self._run_child(target, on_event)
            except Busy:
                outcome.append(False)
                started.set()

        threading.Thread(target=work, name="mimic-retrain", daemon=True).start()
        started.wait()
        return outcome[0]

    def run(self, target: Target | None, on_event: Callable[[Event], None]) -> bool:
        """Run in this thread (the scheduler's); False if another run holds the lock."""
        try:
            with retrain_lock(self.settings.data_dir):
                self._run_child(target, on_event)
                return True
        except Busy:
            return False

    def _run_child(self, target: Target | None, on_event: Callable[[Event], None]) -> None:
        events: list[Event] = []
        env = {**(self.env if self.env is not None else os.environ),
               "PYTHONUNBUFFERED": "1"}
        with subprocess.Popen(self.command(target), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) as child:
            assert child.stdout is not None and child.stderr is not None
            for line in child.stdout:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue  # stray output from a library, not an event
                events.append(event)
                on_event(event)
            errors = child.stderr.read()
        if child.returncode != 0:
            log.error("retrain run failed (exit %s): %s", child.returncode, errors[-2000:])
            event = {"event": "failed", "text": "Retraining failed; the admins can find the "
                     "details in mimic's log. The active models are unchanged."}
            events.append(event)
            on_event(event)
        self.last_result = events
