"""What processes sharing one database coordinate through it: the named locks (file locks on
SQLite, advisory locks on PostgreSQL), the rate limit counted in PostgreSQL, and the election
of the one process that runs the nightly scheduler. tests/test_replicas.py runs the same over
real `mimic serve` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from mimic.bot.replies import RateLimiter, SharedRateLimiter, rate_limiter
from mimic.bot.retrain import RetrainRunner
from mimic.bot.schedule import Elected
from mimic.core.config import Settings
from mimic.core.lock import Busy, named_lock, retrain_lock
from mimic.core.store import RateLimitHit, Store, make_engine, upgrade
from tests.replicas import until

HOLD = """
import sys
from mimic.core.config import Settings
from mimic.core.lock import named_lock
lock = named_lock(Settings(_env_file=None, DATABASE_URL=sys.argv[1],
                           MIMIC_DATA_DIR=sys.argv[2]), "retrain")
print("held" if lock.acquire() else "refused", flush=True)
sys.stdin.read()  # until killed
"""


def settings_of(database_url: str, tmp_path: Path) -> Settings:
    return Settings(_env_file=None, DATABASE_URL=database_url,
                    MIMIC_DATA_DIR=str(tmp_path / "data"), MIMIC_RETRAIN_CRON="0 3 * * *")


def test_a_lock_has_one_holder_and_dies_with_its_process(database_url: str,
                                                          tmp_path: Path) -> None:
    settings = settings_of(database_url, tmp_path)
    first, second = named_lock(settings, "retrain"), named_lock(settings, "retrain")
    assert first.acquire() and first.held()
    assert not second.acquire()
    with pytest.raises(Busy), retrain_lock(settings):
        pass
    other = named_lock(settings, "scheduler")
    assert other.acquire()  # another name, another lock
    other.release()
    first.release()
    assert second.acquire()
    second.release()

    holder = subprocess.Popen([sys.executable, "-c", HOLD, database_url, str(settings.data_dir)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert not first.acquire()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        assert until(first.acquire), "the lock outlived its process"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        first.release()


def test_the_shared_rate_limit_admits_exactly_the_limit_at_once(any_store: Store,
                                                               tmp_path: Path) -> None:
    url = any_store.engine.url.render_as_string(hide_password=False)
    settings = settings_of(url, tmp_path).model_copy(update={"serve_processes": 2})
    assert isinstance(rate_limiter(settings, any_store), SharedRateLimiter)
    # Two limiters, as two processes would have, each asked from six threads at once.
    limiters = [SharedRateLimiter(any_store, 5, tmp_path) for _ in range(2)]
    start = threading.Barrier(12)
    waits: list[float] = []

    def ask(i: int) -> None:
        start.wait()
        waits.append(limiters[i % 2].allow("U5"))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(waits) == 12 and waits.count(0.0) == 5
    assert all(0 < wait <= 60 for wait in waits if wait)
    assert limiters[0].allow("U6") == 0.0  # per person
    with any_store.session() as s:  # a minute later
        for hit in s.scalars(select(RateLimitHit)):
            hit.at -= timedelta(seconds=61)
    assert limiters[1].allow("U5") == 0.0
    with any_store.session() as s:  # the old rows of whoever asked went with it
        assert s.scalar(select(func.count()).select_from(RateLimitHit)
                        .where(RateLimitHit.user_id == "U5")) == 1


def test_one_sqlite_process_keeps_the_limit_in_memory(store: Store, tmp_path: Path) -> None:
    settings = settings_of(str(store.engine.url), tmp_path)
    assert isinstance(rate_limiter(settings, store), RateLimiter)


def test_one_process_of_many_runs_the_scheduler_and_another_takes_over(
        database_url: str, tmp_path: Path) -> None:
    settings = settings_of(database_url, tmp_path)
    upgrade(make_engine(database_url))
    replicas = [Elected(settings, poll_s=0.1).start() for _ in range(3)]
    try:
        assert until(lambda: any(r.elected.is_set() for r in replicas))
        leaders = [r for r in replicas if r.elected.is_set()]
        assert len(leaders) == 1 and leaders[0].scheduler is not None
        assert all(r.scheduler is None for r in replicas if r is not leaders[0])
        leaders[0].close()
        rest = [r for r in replicas if r is not leaders[0]]
        assert until(lambda: any(r.elected.is_set() for r in rest))
        assert sum(r.elected.is_set() for r in rest) == 1
    finally:
        for replica in replicas:
            replica.close()
    assert all(not r.elected.is_set() and r.scheduler is None for r in replicas)


def test_the_shared_rate_limit_holds_whatever_the_default_isolation(postgres_store: Store,
                                                                   postgres_url: str) -> None:
    name = make_url(postgres_url).database
    with postgres_store.engine.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_isolation '
                          "TO 'repeatable read'"))
        conn.commit()
    postgres_store.engine.dispose()  # new sessions take the new default
    limiter = SharedRateLimiter(postgres_store, 5)
    start = threading.Barrier(8)
    waits: list[float] = []

    def ask() -> None:
        start.wait()
        waits.append(limiter.allow("U5"))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert waits.count(0.0) == 5


def test_a_lost_retrain_lock_is_noticed_while_its_run_goes_on(
        postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mimic.core.lock.CHECK_HELD_S", 0.05)
    settings = settings_of(postgres_url, tmp_path)
    lost = threading.Event()
    with retrain_lock(settings, on_lost=lost.set):
        # The connection holding it dies (a database restart, a dropped link).
        with make_engine(postgres_url).connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE application_name = 'mimic retrain lock'"))
        assert lost.wait(10)
        assert named_lock(settings, "retrain").acquire()  # the lock is free for others


def test_a_retrain_that_cannot_reach_the_database_says_so(tmp_path: Path) -> None:
    settings = settings_of("postgresql://mimic@127.0.0.1:1/none", tmp_path)
    with pytest.raises(OperationalError):
        RetrainRunner(settings).start(None, lambda _event: None)


@pytest.mark.parametrize("args", [["models"], ["train", "--base"], ["retrain"]])
def test_a_command_that_cannot_reach_the_database_names_it_without_a_traceback(
        tmp_path: Path, args: list[str]) -> None:
    """A database down or restarting when the command starts or takes its lock."""
    url = "postgresql://mimic:s3cret@127.0.0.1:1/none"  # nothing listens on port 1
    env = {**os.environ, "DATABASE_URL": url, "MIMIC_DATA_DIR": str(tmp_path), "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "mimic.cli", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    said = done.stdout + done.stderr
    assert "the database at postgresql://mimic:***@127.0.0.1:1/none cannot be used" in said
    assert "Is the server running" in said and "DATABASE_URL" in said
    assert "Traceback" not in said and "s3cret" not in said


def test_a_bad_cron_is_refused_with_the_setting_named() -> None:
    with pytest.raises(ValidationError, match="not a crontab line"):
        Settings(_env_file=None, MIMIC_RETRAIN_CRON="0 25 * * *")
