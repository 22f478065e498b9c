"""The Slack app: a Bolt `App` built from settings. Listeners stay thin: acknowledge, call
the plain functions in bot/replies.py (or exporter/live.py), send what they return."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slack_bolt import App
from slack_sdk.errors import SlackApiError

from bot.models import ModelCache
from bot.replies import Reply, Responder
from bot.retrain import Event, RetrainRunner
from exporter.live import apply_event
from exporter.webapi import make_client
from mimic.config import Settings
from mimic.inert import make_inert
from mimic.store import Store
from trainer.corpus import Target
from trainer.device import pick_device

log = logging.getLogger(__name__)


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def payload(reply: Reply) -> dict[str, Any]:
    """The response_url body for a reply; every text to Slack is made inert here, once more."""
    return {"text": make_inert(reply.text),
            "response_type": "in_channel" if reply.public else "ephemeral",
            "replace_original": False}


def build_app(
    settings: Settings,
    store: Store,
    *,
    cache: ModelCache | None = None,
    runner: RetrainRunner | None = None,
) -> App:
    client = make_client(settings)
    cache = cache or ModelCache(settings.data_dir, device=pick_device(settings.device))
    runner = runner or RetrainRunner(settings)
    app = App(
        client=client,
        signing_secret=_secret(settings.slack_signing_secret) or "",
        # The token is checked by `mimic serve` with a clear message instead (auth.test).
        token_verification_enabled=False,
        # Replies are sent after ack() on these threads; Bolt's default of 5 would queue.
        listener_executor=ThreadPoolExecutor(max_workers=32, thread_name_prefix="mimic"),
    )

    def is_admin(user_id: str) -> bool:
        try:
            user = client.users_info(user=user_id)["user"]
        except SlackApiError as exc:
            log.warning("users.info for %s failed: %s", user_id, exc.response.get("error"))
            return False
        return bool(user.get("is_admin") or user.get("is_owner"))

    def start_retrain(target: Target | None, followup: Callable[[Reply], None]) -> bool:
        outcomes: list[str] = []

        def on_event(event: Event) -> None:
            # response_url takes 5 messages: progress lines go out as they come, the
            # per-target results in one message at the end.
            if event["event"] == "outcome":
                outcomes.append(f"• {event['text']}")
            elif event["event"] in ("done", "failed"):
                followup(Reply("\n".join([event["text"], *outcomes])))
            else:
                followup(Reply(event["text"]))

        return runner.start(target, on_event)

    responder = Responder(settings, store, cache, is_admin=is_admin,
                          start_retrain=start_retrain)

    @app.command("/mimic")
    def mimic_command(ack: Any, command: dict[str, Any], respond: Any) -> None:
        ack()
        reply = responder.handle(command.get("user_id", ""), command.get("channel_id", ""),
                                 command.get("text") or "",
                                 followup=lambda r: respond(**payload(r)))
        respond(**payload(reply))

    @app.event("message")
    def on_message(event: dict[str, Any]) -> None:
        result = apply_event(
            store, event, allow=settings.channel_allowed,
            channel_info=lambda cid: client.conversations_info(channel=cid)["channel"])
        log.debug("message event in %s: %s", event.get("channel"), result)

    return app
