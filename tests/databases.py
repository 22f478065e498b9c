"""Store fixtures over both back ends: a fresh SQLite file, and a fresh PostgreSQL database
when tests/run.sh started a server (MIMIC_TEST_POSTGRES_URL). CI must test both."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mimic.core.store import Store, make_engine, upgrade

POSTGRES_URL = os.environ.get("MIMIC_TEST_POSTGRES_URL")


def _postgres_database() -> Iterator[str]:
    if not POSTGRES_URL:
        if os.environ.get("CI"):
            pytest.fail("CI must test PostgreSQL: tests/run.sh could not start a server")
        pytest.skip("no PostgreSQL server (run the suite through `make test`)")
    name = f"mimic_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(make_url(POSTGRES_URL).set(drivername="postgresql+psycopg"),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind (no tables yet)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/mimic.db"
    else:
        yield from _postgres_database()


def _migrated(database_url: str) -> Iterator[Store]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield Store(engine)
    engine.dispose()


@pytest.fixture
def any_store(database_url: str) -> Iterator[Store]:
    """A migrated store on each back end."""
    yield from _migrated(database_url)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """An empty PostgreSQL database (no tables yet): for what only PostgreSQL does."""
    yield from _postgres_database()


@pytest.fixture
def postgres_store(postgres_url: str) -> Iterator[Store]:
    """A migrated PostgreSQL store."""
    yield from _migrated(postgres_url)
