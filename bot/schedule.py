"""The nightly retraining: an APScheduler 3 BackgroundScheduler inside `mimic serve`.

Jobs live in the store's database, so a run that falls due while the bot is restarting is
still made up when it comes back (within the misfire grace), and the job is registered once
however often the bot starts.

APScheduler's documentation forbids sharing a persistent job store between schedulers (each
would run the job), so with several replicas one is elected: `Elected` runs the scheduler only
while its process holds the scheduler lock (core/lock.py), and the others try again every few
seconds, to take over when the holder stops or dies. The job itself still takes the retrain
lock, so even a hand-over in the middle of a run never trains twice at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from mimic.bot.retrain import RetrainRunner
from mimic.core.config import Settings, get_settings
from mimic.core.lock import named_lock
from mimic.core.store import make_engine

log = logging.getLogger(__name__)
JOB_ID = "nightly-retrain"
MISFIRE_GRACE_S = 6 * 3600  # a run missed by a restart (or a busy night) still happens
# How often a replica without the scheduler tries to take it over (one query each time), and
# the one holding it checks that its lock's connection is still alive.
ELECTION_POLL_S = 5.0

# The nightly runs going on in this process, so that stop_scheduler can end them: the job is
# referred to by name in the job store, so it can hold no reference of its own.
_running: set[RetrainRunner] = set()
_stopping = threading.Event()
_guard = threading.Lock()


def nightly_retrain() -> None:
    """The job. Module-level and argument-free: the job store refers to it by name."""
    runner = RetrainRunner(get_settings())
    with _guard:
        if _stopping.is_set():
            return
        _running.add(runner)
    try:
        ran = runner.run(None, lambda event: log.info("retrain: %s", event.get("text")))
    finally:
        with _guard:
            _running.discard(runner)
    if not ran:
        log.info("nightly retrain skipped: another run holds the lock")


def _log_result(event: JobExecutionEvent) -> None:
    if event.exception is not None:
        log.error("nightly retrain failed: %r", event.exception)


def start_scheduler(
    settings: Settings, listener: Callable[[JobExecutionEvent], None] | None = None
) -> BackgroundScheduler:
    """Start the scheduler with the nightly job; `listener` hears each run's end."""
    trigger = CronTrigger.from_crontab(settings.retrain_cron)
    scheduler = BackgroundScheduler(jobstores={"default": SQLAlchemyJobStore(
        engine=make_engine(settings.database_url), tablename="scheduler_jobs")})
    # Paused first, to look at the stored job: re-adding an unchanged job would move its next
    # run to the future and forget one missed during the restart.
    scheduler.add_listener(_log_result, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    if listener is not None:
        scheduler.add_listener(listener, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    _stopping.clear()
    scheduler.start(paused=True)
    try:
        existing = scheduler.get_job(JOB_ID)
        if existing is None or str(existing.trigger) != str(trigger):
            scheduler.add_job(nightly_retrain, trigger, id=JOB_ID, name="export and retrain",
                              replace_existing=True, coalesce=True, max_instances=1,
                              misfire_grace_time=MISFIRE_GRACE_S)
        scheduler.resume()
    except BaseException:
        scheduler.shutdown(wait=False)  # its thread and job store go too
        raise
    return scheduler


def stop_scheduler(scheduler: BackgroundScheduler) -> None:
    """Stop the scheduler and a nightly run in progress (its child process is terminated, so
    this returns promptly), joining the job's thread."""
    with _guard:
        _stopping.set()
        runners = list(_running)
    for runner in runners:
        runner.close()
    scheduler.shutdown(wait=True)


class Elected:
    """The nightly scheduler, run by whichever one process holds the scheduler lock. Its
    thread tries for the lock now and every `poll_s` after; a holder whose lock connection
    broke (the lock is gone with it) stops its scheduler and becomes a candidate again.
    `close()` stops the scheduler, lets go of the lock and joins the thread."""

    def __init__(self, settings: Settings, *, poll_s: float = ELECTION_POLL_S,
                 listener: Callable[[JobExecutionEvent], None] | None = None) -> None:
        self.settings, self.poll_s, self.listener = settings, poll_s, listener
        self.lock = named_lock(settings, "scheduler")
        self.scheduler: BackgroundScheduler | None = None
        self.elected = threading.Event()  # set while this process runs the scheduler
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._campaign, name="mimic-election")

    def start(self) -> Elected:
        self._thread.start()
        return self

    def _campaign(self) -> None:
        while True:
            try:
                self._step()
            except Exception:  # noqa: BLE001 - a database hiccup: try again next time
                log.exception("scheduler election failed; retrying in %.0f s", self.poll_s)
                self._step_down()
            if self._stop.wait(self.poll_s):
                break
        self._step_down()

    def _step(self) -> None:
        if self.scheduler is not None:
            if not self.lock.held():
                log.warning("lost the scheduler lock: another replica may take over")
                self._step_down()
            return
        if self.lock.acquire():
            self.scheduler = start_scheduler(self.settings, self.listener)
            self.elected.set()
            log.info("this process runs the nightly retraining (%s)", self.settings.retrain_cron)

    def _step_down(self) -> None:
        self.elected.clear()
        if self.scheduler is not None:
            stop_scheduler(self.scheduler)
            self.scheduler = None
        self.lock.release()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        else:  # never started, or already ended
            self._step_down()
