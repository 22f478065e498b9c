"""The real Bolt app in HTTP mode on 127.0.0.1 over the tiny trained workspace, its Web API
client on the fake Slack, replies caught at a local response_url: the `running` fixture."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pydantic import SecretStr

from mimic.bot.app import build_app
from mimic.bot.http import make_http_server, serve_in_thread
from mimic.bot.retrain import RetrainRunner
from mimic.core.config import Settings
from mimic.core.store import Store
from tests import slack_client
from tests.fake_slack import TOKEN, FakeSlack
from tests.slack_client import Catcher


@dataclass
class Running:
    url: str
    catcher: Catcher
    store: Store
    settings: Settings
    slack: FakeSlack


@pytest.fixture
def running(world: tuple[Store, Settings], fake_slack: FakeSlack,
            request: pytest.FixtureRequest) -> Iterator[Running]:
    """Settings may be changed with `@pytest.mark.parametrize("running", [{...}],
    indirect=True)`."""
    store, settings = world
    settings = settings.model_copy(update={
        "slack_api_url": fake_slack.url, "admins": ["U9"],
        "slack_signing_secret": SecretStr(slack_client.SIGNING_SECRET),
        "slack_bot_token": SecretStr(TOKEN), "target_minutes": 0.05,
        **getattr(request, "param", {})})
    fake_slack.add_user("U1", "alice")
    fake_slack.add_user("U2", "bob")
    fake_slack.add_user("U8", "olga", is_admin=True)
    fake_slack.add_channel("C1", "general")
    env = {**os.environ, "DATABASE_URL": settings.database_url,
           "MIMIC_DATA_DIR": str(settings.data_dir), "MIMIC_MIN_CHARS": "500",
           "MIMIC_TARGET_MINUTES": "0.05", "MIMIC_DEVICE": "cpu",
           "SLACK_BOT_TOKEN": TOKEN, "SLACK_API_URL": fake_slack.url}
    app = build_app(settings, store, runner=RetrainRunner(settings, env=env))
    server = make_http_server(app.bolt, "127.0.0.1", 0)
    thread = serve_in_thread(server)
    catcher = Catcher()
    yield Running(f"http://127.0.0.1:{server.server_port}/slack/events", catcher, store,
                  settings, fake_slack)
    server.shutdown()
    thread.join()
    server.server_close()
    app.close()
    catcher.stop()
