"""The App Home: views built from the store (plain function), and the real Bolt app over HTTP
publishing them on `app_home_opened` and answering their buttons, signed like Slack."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from mimic.bot.home import OPT_IN, OPT_OUT, RETRAIN, SECTION_CHARS, home_view
from mimic.bot.replies import quality
from mimic.core.config import Settings
from mimic.core.lock import Busy, retrain_lock
from mimic.core.store import Channel, Coverage, Message, Store
from mimic.trainer.corpus import BASE
from mimic.trainer.registry import active_version
from tests.running import Running
from tests.slack_client import action, event
from tests.test_app import PING, ask


def texts(view: dict[str, Any]) -> str:
    """Every text the view shows, one per line."""
    found = []
    for block in view["blocks"]:
        found.append(block.get("text", {}).get("text", ""))
        for button in [block.get("accessory"), *block.get("elements", [])]:
            if button:
                found += [button["text"]["text"], *(part["text"] for part in
                                                    button.get("confirm", {}).values())]
    return "\n".join(found)


def buttons(view: dict[str, Any]) -> set[str]:
    return {button["action_id"] for block in view["blocks"]
            for button in [block.get("accessory"), *block.get("elements", [])] if button}


def open_home(r: Running, user: str) -> dict[str, Any]:
    seen = len(r.slack.views.get(user, []))
    assert event(r.url, {"type": "app_home_opened", "user": user, "channel": "D9",
                         "tab": "home"})[0] == 200
    return r.slack.wait_views(user, seen + 1)[-1]


def press(r: Running, action_id: str, user: str) -> dict[str, Any]:
    seen = len(r.slack.views.get(user, []))
    assert action(r.url, action_id, user=user)[0] == 200
    return r.slack.wait_views(user, seen + 1)[seen]


def lock_is_free(r: Running) -> bool:
    try:
        with retrain_lock(r.settings):
            return True
    except Busy:
        return False


def test_home_shows_the_viewer_their_standing_and_no_admin_part(running: Running) -> None:
    view = open_home(running, "U1")
    with running.store.session() as s:
        loss = s.scalars(select(Coverage.val_loss).where(
            Coverage.version_id == active_version(s, BASE.key).id,  # type: ignore[union-attr]
            Coverage.target == "user:U1")).one()
        public = s.scalar(select(func.count()).select_from(Message).join(Channel).where(
            Message.user_id == "U1", ~Message.deleted, ~Channel.is_private, ~Channel.is_dm))
    shown = texts(view)
    assert "You're opted in" in shown
    assert f"mimic may learn from *{public}* of your messages" in shown
    assert (f"You can be mimicked* by the workspace model v1: {quality(loss)} ({loss:.2f} "
            "nats/char" in shown)
    assert buttons(view) == {OPT_OUT} and "For admins" not in shown
    assert not PING.search(shown)


def test_home_opt_out_button_refuses_mimic_at_once_and_opt_in_undoes_it(
        running: Running) -> None:
    assert OPT_OUT in buttons(open_home(running, "U1"))
    view = press(running, OPT_OUT, "U1")
    shown = texts(view)
    assert "You're opted out: nobody can mimic you" in shown  # the notice: what it did
    assert "Nobody can mimic you" in shown and "learn from *0* of your messages" in shown
    assert buttons(view) == {OPT_IN}
    refused = ask(running, "<@U1|alice>", user="U2")
    assert refused["response_type"] == "ephemeral" and "opted out" in refused["text"]
    view = press(running, OPT_IN, "U1")
    assert "You're opted in" in texts(view) and buttons(view) == {OPT_OUT}


def test_a_non_admin_cannot_see_or_press_retrain_now(running: Running) -> None:
    assert RETRAIN not in buttons(open_home(running, "U2"))
    asked = running.slack.calls["users.info"]
    view = press(running, RETRAIN, "U2")  # forged: their Home never had the button
    assert "only mimic's admins can start a retraining" in texts(view)
    assert RETRAIN not in buttons(view) and "For admins" not in texts(view)
    assert running.slack.calls["users.info"] > asked  # authorised again on the server
    assert lock_is_free(running)  # nothing started (a run holds it before the view is sent)


def test_an_admin_sees_the_figures_and_retrain_now_starts_one_run(running: Running) -> None:
    view = open_home(running, "U8")  # a workspace admin, per users.info
    shown = texts(view)
    assert "For admins" in shown and "messages stored" in shown
    assert "workspace model v1: 2 people and 2 channels" in shown
    assert "next training" in shown and buttons(view) == {OPT_OUT, RETRAIN}
    assert lock_is_free(running)
    started = press(running, RETRAIN, "U8")
    assert "Retraining everything that changed" in texts(started)
    assert not lock_is_free(running)
    again = press(running, RETRAIN, "U9")  # on MIMIC_ADMINS
    assert "already going" in texts(again)
    # The run's progress replaces the notice on the admin's Home as it comes.
    progress = running.slack.wait_views("U8", 3, timeout=60)[2]
    assert "Exporting new messages" in texts(progress)


def test_home_view_under_opt_in_consent_for_a_newcomer_and_long_notices(
        world: tuple[Store, Settings]) -> None:
    store, settings = world
    asking = settings.model_copy(update={"consent": "opt-in"})
    view = home_view(store, asking, "U1", admin=False)
    assert "You're not opted in" in texts(view) and buttons(view) == {OPT_IN}
    assert "learn from *0* of your messages" in texts(view)
    newcomer = texts(home_view(store, settings, "U77", admin=False))
    assert "You're opted in" in newcomer and "mimic needs 500 characters" in newcomer
    notice = "<!channel> @here " + "done. " * 1000
    view = home_view(store, settings, "U1", admin=True, notice=notice)
    top = view["blocks"][1]["text"]["text"]
    assert len(top) <= SECTION_CHARS and top.endswith("…") and not PING.search(top)
