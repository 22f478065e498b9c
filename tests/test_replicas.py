"""Two `mimic serve --http` replicas on one PostgreSQL and one model folder, as README's
"Outgrowing one machine" deploys them: one rate limit across both, one retraining at a time,
one nightly run, a promotion seen by both without a restart, and a replica killed mid-request
costing nothing but its own requests."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from mimic.core.store import ModelVersion, Run, Store, make_engine
from mimic.trainer.corpus import BASE
from mimic.trainer.registry import active_version
from tests import trained
from tests.databases import POSTGRES_URL
from tests.fake_slack import FakeSlack
from tests.replicas import Replica, children, job_due_now, replica_env, until
from tests.slack_client import Catcher, slash

pytestmark = pytest.mark.slow
CRON = "0 3 * * *"


def _admin_engine():  # noqa: ANN202 - an Engine
    if not POSTGRES_URL:
        pytest.skip("no PostgreSQL server (run the suite through `make test`)")
    return create_engine(make_url(POSTGRES_URL).set(drivername="postgresql+psycopg"),
                         isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The tiny trained workspace in a PostgreSQL database, built once: (its name, folder)."""
    admin = _admin_engine()
    name = f"mimic_tpl_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    root = tmp_path_factory.mktemp("pg-trained")
    trained.build(root, make_url(POSTGRES_URL).set(database=name)
                  .render_as_string(hide_password=False))
    yield name, root
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@dataclass
class Deployment:
    database_url: str
    data_dir: Path
    store: Store
    slack: FakeSlack
    catcher: Catcher
    folder: Path

    def env(self, **extra: str) -> dict[str, str]:
        return replica_env(self.database_url, self.data_dir, self.slack.url,
                           MIMIC_ADMINS="U9", MIMIC_TARGET_MINUTES="0.05",
                           MIMIC_RETRAIN_CRON=CRON, **extra)

    def start(self, count: int = 2, *, scheduler: bool = False) -> list[Replica]:
        replicas = [Replica(self.env(), self.folder / f"replica-{i}.log", scheduler=scheduler)
                    for i in range(count)]
        return [replica.wait_listening() for replica in replicas]

    def ask(self, replica: Replica, command: str, user: str = "U2") -> str:
        """A signed /mimic to `replica`; the text of its (first) reply."""
        response_url = self.catcher.url()
        assert slash(replica.url, command, response_url, user=user)[0] == 200
        return self.catcher.wait(response_url, timeout=60)[0]["text"]


@pytest.fixture
def deployment(pg_template: tuple[str, Path], fake_slack: FakeSlack,
               tmp_path: Path) -> Iterator[Deployment]:
    """A copy of the trained PostgreSQL workspace and its model folder, the fake Slack they
    talk to and a response_url catcher; the test starts the replicas it needs."""
    template, root = pg_template
    name = f"mimic_test_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    shutil.copytree(root / "data", tmp_path / "data")
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    for uid, handle in (("U1", "alice"), ("U2", "bob"), ("U9", "olga")):
        fake_slack.add_user(uid, handle)
    fake_slack.add_channel("C1", "general")
    store = Store(make_engine(url))
    catcher = Catcher()
    yield Deployment(url, tmp_path / "data", store, fake_slack, catcher, tmp_path)
    catcher.stop()
    store.engine.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def replicas(deployment: Deployment) -> Iterator[list[Replica]]:
    """Two replicas without schedulers, stopped (and checked to stop cleanly) afterwards."""
    started = deployment.start()
    yield started
    for replica in started:
        if replica.process.poll() is None:
            assert replica.stop() == 0, replica.logged()[-3000:]


def test_the_rate_limit_is_one_across_replicas(deployment: Deployment,
                                               replicas: list[Replica]) -> None:
    # Twelve requests from one person within a minute, alternating between the replicas.
    with ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(lambda i: deployment.ask(replicas[i % 2], "@alice", user="U5"),
                                range(12)))
    answered = [r for r in replies if "mimicking" in r]
    waiting = [r for r in replies if "Easy there: mimic answers 5 requests a minute" in r]
    assert (len(answered), len(waiting)) == (5, 7), replies
    assert "mimicking" in deployment.ask(replicas[1], "@alice", user="U6")  # per person


def test_retrain_pressed_on_both_replicas_at_once_runs_once(deployment: Deployment,
                                                           replicas: list[Replica]) -> None:
    urls = [deployment.catcher.url() for _ in replicas]
    with ThreadPoolExecutor(2) as pool:
        acks = list(pool.map(lambda i: slash(replicas[i].url, "retrain", urls[i],
                                             user="U9")[0], range(2)))
    assert acks == [200, 200]
    first = [deployment.catcher.wait(url)[0]["text"] for url in urls]
    started = [i for i, reply in enumerate(first) if reply.startswith("Retraining everything")]
    refused = [i for i, reply in enumerate(first) if "already going" in reply]
    assert len(started) == 1 and len(refused) == 1, first
    # The run goes on to its end, reporting where it was asked for; the other says nothing.
    (url,) = [urls[i] for i in started]
    assert until(lambda: any("Retraining finished" in b["text"]
                             for b in deployment.catcher.bodies.get(
                                 "/" + url.split("/", 3)[3], [])), 180)
    (other,) = [urls[i] for i in refused]
    assert len(deployment.catcher.wait(other)) == 1
    with deployment.store.session() as s:
        assert s.scalar(select(func.count()).select_from(Run).where(Run.kind == "export")) == 1


def test_a_nightly_run_due_on_two_schedulers_runs_once(deployment: Deployment) -> None:
    engine = make_engine(deployment.database_url)
    jobs = job_due_now(engine, CRON)
    replicas = deployment.start(scheduler=True)
    try:
        assert until(lambda: any("Retraining finished" in r.logged() for r in replicas), 180)
        elected = [r for r in replicas if "this process runs the nightly" in r.logged()]
        assert len(elected) == 1
        assert sum("Retraining finished" in r.logged() for r in replicas) == 1
        with deployment.store.session() as s:
            assert s.scalar(select(func.count()).select_from(Run)
                            .where(Run.kind == "export")) == 1
        # The elected one dies: the other takes the schedule over, and does not run the
        # night again (the job store already moved it to tomorrow).
        (leader,) = elected
        (standby,) = [r for r in replicas if r is not leader]
        leader.kill()
        assert standby.wait_logged("this process runs the nightly", 30)
        next_run = jobs.get_next_run_time()
        assert next_run is not None and next_run > datetime.now(UTC)
        assert "Retraining finished" not in standby.logged()
    finally:
        for replica in replicas:
            replica.stop()
        engine.dispose()


def test_a_model_promoted_elsewhere_is_served_by_both_within_seconds(
        deployment: Deployment, replicas: list[Replica]) -> None:
    assert all("workspace model v1" in deployment.ask(r, "@alice", user=f"U{i}0")
               for i, r in enumerate(replicas))
    # A third process, as a trainer machine would: `mimic train`, on the same database and
    # model folder. Six seconds of training: three, on a host busy with other work, once
    # left the new model worse than v1 (3.31 against 2.42 nats/char), and it was kept back.
    done = subprocess.run([sys.executable, "-m", "mimic.cli", "train", "--base", "--fresh",
                           "--minutes", "0.1"], env=deployment.env(), cwd=deployment.folder,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    promoted = time.monotonic()
    with deployment.store.session() as s:
        assert active_version(s, BASE.key).version == 2, done.stdout  # type: ignore[union-attr]
    # Their next request serves it: each request asks the registry what is active.
    assert all("workspace model v2" in deployment.ask(r, "@alice", user=f"U{i}1")
               for i, r in enumerate(replicas))
    assert time.monotonic() - promoted < 5
    assert all(r.process.poll() is None for r in replicas)  # no restart


def test_a_replica_killed_mid_request_costs_only_its_own_requests(
        deployment: Deployment, replicas: list[Replica]) -> None:
    doomed, survivor = replicas
    urls = [deployment.catcher.url() for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:  # acknowledged at once, answered in the background
        acks = list(pool.map(lambda i: slash(doomed.url, "@alice", urls[i],
                                             user=f"U7{i}")[0], range(6)))
    assert acks == [200] * 6
    doomed.kill()
    assert all("mimicking" in deployment.ask(survivor, "@alice", user=f"U8{i}")
               for i in range(3))
    # What the dead one had begun left nothing behind: its sessions (and any transaction or
    # lock in them) are gone, and every counted request is a whole row.
    with deployment.store.session() as s:
        assert until(lambda: not s.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()")), 10)
        counted = s.execute(text("SELECT user_id, count(*) FROM rate_limit_hits "
                                 "WHERE user_id LIKE 'U7_' GROUP BY user_id")).all()
        assert all(n == 1 for _user, n in counted)  # each counted once, or not at all
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 2
    # including those the dead one was answering (no lock of theirs was left behind)
    assert "mimicking" in deployment.ask(survivor, "@alice", user="U70")
    assert doomed.stop() == -9


def test_a_replica_killed_while_retraining_takes_its_run_with_it(
        deployment: Deployment, replicas: list[Replica]) -> None:
    doomed, survivor = replicas
    assert deployment.ask(doomed, "retrain", user="U9").startswith("Retraining everything")
    # The run, in its own process (started just after the lock was taken and the reply sent).
    assert until(lambda: children(doomed.process.pid), 10)
    (child,) = children(doomed.process.pid)
    doomed.kill()
    # The lock died with the replica; the run must not go on without it.
    assert until(lambda: not Path(f"/proc/{child}").exists(), 10), "the run outlived its bot"
    assert deployment.ask(survivor, "retrain", user="U9").startswith("Retraining everything")


def test_mimic_train_stops_at_once_when_its_lock_is_lost(deployment: Deployment) -> None:
    trainer = subprocess.Popen([sys.executable, "-m", "mimic.cli", "train", "--base", "--fresh",
                                "--minutes", "2"], env=deployment.env(), cwd=deployment.folder,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = ("FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'mimic retrain lock'")
    # Held, not merely connecting: cut while its connection is being set up, the run fails
    # to take the lock instead, and says the database cannot be used (test_coordination).
    held = f"FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid IN (SELECT pid {lock})"
    try:
        with deployment.store.engine.connect().execution_options(
                isolation_level="AUTOCOMMIT") as conn:
            assert until(lambda: conn.scalar(text(f"SELECT count(*) {held}")), 60)
            # Its connection dies (a database restart, a dropped link): another could train.
            conn.execute(text(f"SELECT pg_terminate_backend(pid) {lock}"))
        _out, err = trainer.communicate(timeout=60)
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
    assert trainer.returncode == -signal.SIGTERM and "lost the retrain lock" in err, err[-2000:]
    with deployment.store.session() as s:  # it published nothing
        assert s.scalar(select(func.count()).select_from(ModelVersion)
                        .where(ModelVersion.target == BASE.key)) == 1
