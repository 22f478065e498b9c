"""The nightly job: registered once across restarts, a run missed by a restart still happens,
and the retrain lock keeps runs one at a time across threads and processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apscheduler.events import JobExecutionEvent
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from mimic.bot.retrain import RetrainRunner
from mimic.bot.schedule import JOB_ID, start_scheduler
from mimic.core.config import Settings, get_settings
from mimic.core.lock import Busy, retrain_lock
from mimic.core.store import make_engine, upgrade
from tests.replicas import job_due_now, until


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/m.db", "MIMIC_DATA_DIR": str(tmp_path),
           "MIMIC_RETRAIN_CRON": "0 3 * * *"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    get_settings.cache_clear()
    upgrade(make_engine(env["DATABASE_URL"]))
    yield get_settings()
    get_settings.cache_clear()


def test_the_job_is_registered_once_across_restarts(settings: Settings) -> None:
    first = start_scheduler(settings)
    next_run = first.get_job(JOB_ID).next_run_time
    first.shutdown()
    second = start_scheduler(settings)
    try:
        jobs = second.get_jobs()
        assert [job.id for job in jobs] == [JOB_ID]
        assert jobs[0].next_run_time == next_run and next_run.hour == 3
        assert jobs[0].coalesce and jobs[0].max_instances == 1
        assert jobs[0].misfire_grace_time >= 3600
    finally:
        second.shutdown()


def test_a_changed_cron_replaces_the_job(settings: Settings) -> None:
    start_scheduler(settings).shutdown()
    scheduler = start_scheduler(settings.model_copy(update={"retrain_cron": "30 4 * * *"}))
    try:
        (job,) = scheduler.get_jobs()
        assert (job.next_run_time.hour, job.next_run_time.minute) == (4, 30)
    finally:
        scheduler.shutdown()


def test_a_run_missed_during_a_restart_still_happens(settings: Settings) -> None:
    start_scheduler(settings).shutdown()
    # As if the bot was down at 03:00: the stored job's next run is ten minutes in the past.
    jobs = SQLAlchemyJobStore(engine=make_engine(settings.database_url),
                              tablename="scheduler_jobs")
    jobs.start(BackgroundScheduler(), "default")
    job = jobs.lookup_job(JOB_ID)
    job.next_run_time = datetime.now(UTC) - timedelta(minutes=10)
    jobs.update_job(job)
    jobs.shutdown()

    done = threading.Event()
    events: list[JobExecutionEvent] = []

    def listen(event: JobExecutionEvent) -> None:
        events.append(event)
        done.set()

    restarted = start_scheduler(settings, listener=listen)
    try:
        assert done.wait(120), "the missed run did not happen"
        assert events[0].job_id == JOB_ID and events[0].exception is None
        assert restarted.get_job(JOB_ID).next_run_time > datetime.now(UTC)
    finally:
        restarted.shutdown()


def test_the_lock_holds_across_threads_and_processes(settings: Settings) -> None:
    runner = RetrainRunner(settings)
    with retrain_lock(settings):
        assert runner.start(None, lambda _e: None) is False
        assert runner.run(None, lambda _e: None) is False
        with pytest.raises(Busy), retrain_lock(settings):
            pass
        shell = subprocess.run([sys.executable, "-m", "mimic.cli", "retrain"],
                               capture_output=True, text=True, timeout=120)
        assert shell.returncode == 1 and "already going" in shell.stderr


@pytest.mark.slow
def test_a_run_reports_its_events_and_releases_the_lock(settings: Settings) -> None:
    events: list[dict] = []
    finished = threading.Event()

    def on_event(event: dict) -> None:
        events.append(event)
        if event["event"] in ("done", "failed"):
            finished.set()

    runner = RetrainRunner(settings)
    assert runner.start(None, on_event) is True
    assert runner.start(None, on_event) is False  # while the first one runs
    assert finished.wait(120)
    assert [e["event"] for e in events][0] == "progress"
    assert events[-1]["event"] == "done", events
    assert any("workspace" in e["text"] and "needs at least" in e["text"] for e in events)
    # The lock is free again once the run is over (its thread lets go right after "done").
    for _ in range(200):
        try:
            with retrain_lock(settings):
                break
        except Busy:
            time.sleep(0.05)
    else:
        pytest.fail("the lock was not released")


@pytest.mark.slow
def test_mimic_schedule_runs_the_due_night_alone_and_stops_on_sigterm(
        settings: Settings, tmp_path: Path) -> None:
    """A training machine's `mimic schedule`: the night due runs there, without a Slack app."""
    job_due_now(make_engine(settings.database_url), settings.retrain_cron)
    log = tmp_path / "schedule.log"
    with log.open("w") as output:
        process = subprocess.Popen([sys.executable, "-m", "mimic.cli", "schedule"],
                                   stdout=output, stderr=subprocess.STDOUT, text=True)
        try:
            assert until(lambda: "Retraining finished" in log.read_text(), 120), \
                log.read_text()[-3000:]
            assert "this process runs the nightly retraining" in log.read_text()
            process.send_signal(signal.SIGTERM)
            assert process.wait(60) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert "Stopped." in log.read_text() and "Traceback" not in log.read_text()
