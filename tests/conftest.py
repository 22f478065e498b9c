"""Fixtures shared across test files (back-end-parametrised ones live in tests/databases.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mimic.core.config import Settings
from mimic.core.store import Store, make_engine, upgrade
from tests import trained
from tests.fake_slack import FakeSlack
from tests.running import running  # noqa: F401 - the Slack app over HTTP, for any test


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A migrated SQLite store in a fresh file; `store.engine.url` tells subprocesses where."""
    engine = make_engine(f"sqlite:///{tmp_path}/mimic.db")
    upgrade(engine)
    yield Store(engine)
    engine.dispose()


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    """An empty fake Slack Web API, serving on 127.0.0.1; fill it with add_user/add_channel/post."""
    server = FakeSlack().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained workspace (tests/trained.py), built once per session."""
    root = tmp_path_factory.mktemp("trained")
    trained.build(root)
    return root


@pytest.fixture
def world(trained_template: Path, tmp_path: Path) -> tuple[Store, Settings]:
    """A private copy of the trained workspace: (store, settings)."""
    return trained.copy(trained_template, tmp_path)
