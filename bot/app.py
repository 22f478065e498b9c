"""The Slack app: a Bolt `App` built from settings. Listeners stay thin: acknowledge, call
the plain functions in bot/replies.py (or exporter/live.py), send what they return."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from slack_bolt import App
from slack_sdk.errors import SlackApiError

from mimic.bot.home import OPT_IN, OPT_OUT, RETRAIN, home_view
from mimic.bot.models import ModelCache
from mimic.bot.replies import Reply, Responder
from mimic.bot.retrain import Event, RetrainRunner, summary
from mimic.bot.threads import (
    PICK_PERSON,
    pick_person_view,
    picked_person,
    post_reply,
    read_before,
    thread_of,
)
from mimic.core.config import Settings
from mimic.core.ids import is_slack_id
from mimic.core.inert import make_inert
from mimic.core.store import Store
from mimic.exporter.live import EventSpool
from mimic.exporter.messages import is_ts
from mimic.exporter.webapi import make_client
from mimic.trainer.corpus import Target
from mimic.trainer.device import pick_device

log = logging.getLogger(__name__)


class SetupError(RuntimeError):
    """The app cannot start with these settings; the message says what to set."""


class _NoBodies(logging.Filter):
    """Bolt logs the whole body of a request whose signature is wrong, and a slash command's
    body carries the legacy verification token: keep the fact, drop the body."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "body" in str(record.msg):
            record.msg, record.args = "refused a request whose signature is not Slack's", ()
        return True


logging.getLogger("slack_bolt.RequestVerification").addFilter(_NoBodies())


def _id_of(entity: object) -> str | None:
    """The Slack id of a payload's {"id": …} object (user, channel), if it is one."""
    value = entity.get("id") if isinstance(entity, dict) else None
    return value if is_slack_id(value) else None


def payload(reply: Reply) -> dict[str, Any]:
    """The response_url body for a reply; every text to Slack is made inert here, once more."""
    return {"text": make_inert(reply.text),
            "response_type": "in_channel" if reply.public else "ephemeral",
            "replace_original": False}


def retrain_reporter(followup: Callable[[Reply], None]) -> Callable[[Event], None]:
    """Relays a run's events to Slack. response_url takes 5 messages: progress lines go out
    as they come, the per-target results in one message at the end, where private channels
    are only counted (the asker may not be a member, or the answer may be public)."""
    outcomes: list[str] = []
    private: Counter[str] = Counter()

    def on_event(event: Event) -> None:
        if event["event"] == "outcome":
            if event.get("private"):
                private[str(event.get("status"))] += 1
            else:
                outcomes.append(f"• {event['text']}")
        elif event["event"] in ("done", "failed"):
            if private:
                count = sum(private.values())
                outcomes.append(f"• {count} private channel{'s' * (count != 1)}: "
                                f"{summary(private)}")
            followup(Reply("\n".join([event["text"], *outcomes])))
        else:
            followup(Reply(event["text"]))

    return on_event


@dataclass
class SlackApp:
    """The Bolt app and what it runs beside it; `close()` stops them all, in order."""

    bolt: App
    responder: Responder
    runner: RetrainRunner
    listeners: ThreadPoolExecutor

    def close(self) -> None:
        """Let the listeners in flight finish (their replies are still being written), then
        stop a retraining run and the sampling thread. Call after the server has stopped."""
        self.listeners.shutdown(wait=True)
        self.runner.close()
        self.responder.close()


def build_app(
    settings: Settings,
    store: Store,
    *,
    mode: Literal["http", "socket"] = "http",
    cache: ModelCache | None = None,
    runner: RetrainRunner | None = None,
) -> SlackApp:
    """The Bolt app. Over HTTP every request must carry Slack's signature (SetupError
    without SLACK_SIGNING_SECRET); in Socket Mode the connection itself is authenticated."""
    if mode == "http" and settings.slack_signing_secret is None:
        raise SetupError("HTTP mode needs SLACK_SIGNING_SECRET (Basic Information → App "
                         "Credentials) to verify that requests come from Slack.")
    client = make_client(settings)
    cache = cache or ModelCache(settings.data_dir, device=pick_device(settings.device))
    runner = runner or RetrainRunner(settings)
    spool = EventSpool(settings.data_dir)
    secret = settings.slack_signing_secret
    # Replies are sent after ack() on these threads; Bolt's default of 5 would queue.
    listeners = ThreadPoolExecutor(max_workers=32, thread_name_prefix="mimic")
    app = App(
        client=client,
        signing_secret=secret.get_secret_value() if secret is not None else None,
        request_verification_enabled=mode == "http",
        # The token is checked by `mimic serve` with a clear message instead (auth.test).
        token_verification_enabled=False,
        listener_executor=listeners,
    )

    def is_admin(user_id: str) -> bool:
        try:
            user = client.users_info(user=user_id)["user"]
        except SlackApiError as exc:
            log.warning("users.info for %s failed: %s", user_id, exc.response.get("error"))
            return False
        return bool(user.get("is_admin") or user.get("is_owner"))

    def start_retrain(target: Target | None, followup: Callable[[Reply], None]) -> bool:
        return runner.start(target, retrain_reporter(followup))

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
        result = spool.apply(
            store, event, allow=settings.channel_allowed,
            channel_info=lambda cid: client.conversations_info(channel=cid)["channel"])
        log.debug("message event in %s: %s", event.get("channel"), result)

    # -- conversations: mentions and the "Mimic a reply" shortcuts ----------------------------

    @functools.cache
    def bot_user_id() -> str | None:
        try:
            return client.auth_test().get("user_id")
        except SlackApiError as exc:  # the mention parser then takes the first mention
            log.warning("auth.test failed: %s", exc.response.get("error"))
            return None

    def context_reader(channel: str, until: str, thread_ts: str | None,
                       inclusive: bool) -> Callable[[], list[tuple[str, str]]]:
        def read() -> list[tuple[str, str]]:
            try:
                return read_before(client, store, channel, until=until, thread_ts=thread_ts,
                                   inclusive=inclusive)
            except SlackApiError as exc:  # answer all the same, after their own messages
                log.warning("reading %s before %s failed: %s", channel, until,
                            exc.response.get("error"))
                return []
        return read

    def deliver(reply: Reply, channel: str, thread_ts: str, user: str) -> None:
        """A public reply into the thread; anything else to the asker only."""
        try:
            if reply.public:
                post_reply(client, settings, channel, thread_ts, reply.text, reply.voice)
            else:
                client.chat_postEphemeral(channel=channel, user=user, thread_ts=thread_ts,
                                          text=make_inert(reply.text))
        except SlackApiError as exc:
            log.warning("posting to %s failed: %s", channel, exc.response.get("error"))

    @app.event("app_mention")
    def on_mention(event: dict[str, Any]) -> None:
        channel, user, ts = event.get("channel"), event.get("user"), event.get("ts")
        if not (is_slack_id(channel) and is_slack_id(user) and is_ts(ts)):
            log.warning("an app_mention without a valid channel, user or ts: ignored")
            return
        thread = thread_of(event)
        reply = responder.mention(
            user, channel, str(event.get("text") or ""), bot_user_id(),
            context_reader(channel, ts, event.get("thread_ts") if thread != ts else None,
                           inclusive=False))
        deliver(reply, channel, thread, user)

    def message_of(body: dict[str, Any]) -> tuple[str, str, dict[str, Any]] | None:
        """(clicker, channel, message) of a shortcut payload, if well formed."""
        user, channel = _id_of(body.get("user")), _id_of(body.get("channel"))
        message = body.get("message")
        if user is None or channel is None or not isinstance(message, dict) \
                or not is_ts(message.get("ts")):
            return None
        return user, channel, message

    def answer_message(user: str, channel: str, message: dict[str, Any], person: str,
                       refuse: Callable[[str], None]) -> None:
        thread = thread_of(message)
        reply = responder.reply_to(user, channel, person, context_reader(
            channel, message["ts"], thread if thread != message["ts"] else None,
            inclusive=True))
        if reply.public:
            deliver(reply, channel, thread, user)
        else:
            refuse(reply.text)

    @app.shortcut("mimic_reply")
    def on_reply_shortcut(ack: Any, shortcut: dict[str, Any], respond: Any) -> None:
        ack()
        found = message_of(shortcut)
        if found is None:
            respond(text="This shortcut did not come with a message I can read.",
                    response_type="ephemeral")
            return
        user, channel, message = found
        answer_message(user, channel, message, str(message.get("user") or ""),
                       lambda text: respond(text=make_inert(text), response_type="ephemeral"))

    @app.shortcut("mimic_reply_as")
    def on_reply_as_shortcut(ack: Any, shortcut: dict[str, Any]) -> None:
        ack()
        found = message_of(shortcut)
        if found is None or not isinstance(shortcut.get("trigger_id"), str):
            return
        _user, channel, message = found
        client.views_open(trigger_id=shortcut["trigger_id"],
                          view=pick_person_view(channel, message))

    @app.view(PICK_PERSON)
    def on_person_picked(ack: Any, body: dict[str, Any], view: dict[str, Any]) -> None:
        ack()
        picked = picked_person(body, view)
        if picked is None:
            log.warning("a %s submission that is not ours: ignored", PICK_PERSON)
            return
        user, channel, message, person = picked
        answer_message(user, channel, message, person, lambda text: deliver(
            Reply(text), channel, thread_of(message), user))

    # -- App Home (bot/home.py): published when opened and after each of its buttons ------

    def publish_home(user_id: str, notice: str = "") -> None:
        try:
            client.views_publish(user_id=user_id, view=home_view(
                store, settings, user_id, admin=responder.may_retrain(user_id), notice=notice))
        except SlackApiError as exc:
            log.warning("views.publish for %s failed: %s", user_id, exc.response.get("error"))
        except Exception:  # also called on the retraining thread, which must carry on
            log.exception("the App Home of %s could not be built", user_id)

    def home_action(body: dict[str, Any], act: Callable[[str], Reply]) -> None:
        user_id = _id_of(body.get("user"))
        if user_id is None:
            log.warning("an App Home action without a Slack user id: ignored")
            return
        publish_home(user_id, responder.safely(user_id, "", "App Home action",
                                               lambda: act(user_id)).text)

    @app.event("app_home_opened")
    def on_home_opened(event: dict[str, Any]) -> None:
        if event.get("tab") == "home" and is_slack_id(event.get("user")):
            publish_home(event["user"])

    @app.action(OPT_OUT)
    def home_optout(ack: Any, body: dict[str, Any]) -> None:
        ack()
        home_action(body, lambda user: responder.optout(user, forget=False))

    @app.action(OPT_IN)
    def home_optin(ack: Any, body: dict[str, Any]) -> None:
        ack()
        home_action(body, responder.optin)

    @app.action(RETRAIN)
    def home_retrain(ack: Any, body: dict[str, Any]) -> None:
        ack()
        # Responder.retrain authorises the presser itself: the button may be forged. Its
        # progress and results replace the notice on their Home as they come.
        home_action(body, lambda user: responder.retrain(
            user, "", None, followup=lambda reply: publish_home(user, reply.text)))

    return SlackApp(app, responder, runner, listeners)
