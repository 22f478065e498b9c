"""`mimic serve --http` replicas as real processes on one database, for tests and bench/:
each listens on its own port, logs to a file, and is stopped (SIGTERM, then SIGKILL) on exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Engine

from mimic.bot.schedule import JOB_ID, MISFIRE_GRACE_S, nightly_retrain
from tests.fake_slack import TOKEN
from tests.slack_client import SIGNING_SECRET


def replica_env(database_url: str, data_dir: Path, slack_url: str, **extra: str) -> dict[str, str]:
    """The environment of a replica: everything it needs comes from the environment, as in a
    deployment (nothing is passed on the command line but the port)."""
    return {**os.environ, "DATABASE_URL": database_url, "MIMIC_DATA_DIR": str(data_dir),
            "MIMIC_DEVICE": "cpu", "MIMIC_MIN_CHARS": "500", "SLACK_BOT_TOKEN": TOKEN,
            "SLACK_API_URL": slack_url, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "PYTHONUNBUFFERED": "1", **extra}


class Replica:
    def __init__(self, env: dict[str, str], log: Path, *, scheduler: bool = False,
                 core: int | None = None) -> None:
        """`core`: run it on that CPU only (`taskset`), as if it had a machine of its own."""
        self.log = log
        self.output = log.open("w")
        self.process = subprocess.Popen(
            [*([] if core is None else ["taskset", "--cpu-list", str(core)]),
             sys.executable, "-m", "mimic.cli", "serve", "--http", "0", "--host", "127.0.0.1",
             *([] if scheduler else ["--no-scheduler"])], cwd=log.parent, env=env,
            stdout=subprocess.PIPE, stderr=self.output, text=True)
        self.url = ""

    def wait_listening(self, timeout: float = 120) -> Replica:
        """Block until the replica says where it listens (it has loaded and checked Slack)."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        for line in self.process.stdout:
            if "Listening on" in line:
                self.url = line.split("Listening on ")[1].strip()
                return self
            if time.monotonic() > deadline:
                break
        self.stop()
        raise RuntimeError(f"replica did not start: {self.log.read_text()[-3000:]}")

    def logged(self) -> str:
        return self.log.read_text()

    def wait_logged(self, text: str, timeout: float = 120) -> bool:
        """Poll the replica's log for `text` (its log is all another process can read)."""
        return until(lambda: text in self.logged(), timeout)

    def kill(self) -> None:
        """As a crash would: SIGKILL, no cleanup of any kind."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.output.close()
        return self.process.returncode


def children(pid: int) -> list[int]:
    """`pid`'s child processes (Linux lists them under the thread that started each)."""
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()]


def until(condition: Callable[[], object], timeout: float = 10) -> bool:
    """Poll `condition()` until it is true or `timeout` passes: for what nothing can tell us
    about (another process's log, its death reaching the database)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def job_due_now(engine: Engine, cron: str) -> SQLAlchemyJobStore:
    """The nightly job as a scheduler registered it last night, due now (missed, within the
    grace), written straight into the job store: no scheduler of this process touches it.
    Returns the store, to read the job's next run time from."""
    jobs = SQLAlchemyJobStore(engine=engine, tablename="scheduler_jobs")
    jobs.start(BackgroundScheduler(), "default")
    jobs.add_job(Job(BackgroundScheduler(), id=JOB_ID, func=nightly_retrain,
                     trigger=CronTrigger.from_crontab(cron), executor="default", args=(),
                     kwargs={}, name="export and retrain", misfire_grace_time=MISFIRE_GRACE_S,
                     coalesce=True, max_instances=1, next_run_time=datetime.now(UTC)))
    return jobs
