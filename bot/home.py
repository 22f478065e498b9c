"""mimic's App Home tab as a Block Kit view, built from the store: plain functions, no Slack
I/O (bot/app.py publishes the view and answers its buttons).

Everyone sees where they stand: opted in or out, with one button to change it, how many of
their messages mimic may learn from, and whether (and how well) it can imitate them. Admins
also see the workspace's figures and a "Retrain now" button, which the server authorises
again when it is pressed: a view is only what one person was shown, a payload can be forged.
"""

from __future__ import annotations

from typing import Any

from mimic.bot.replies import next_training, quality, status_lines
from mimic.core.config import Settings
from mimic.core.inert import make_inert
from mimic.core.store import Store, User
from mimic.trainer.corpus import BASE, Target, corpus_size, may_imitate
from mimic.trainer.registry import serving

OPT_OUT, OPT_IN, RETRAIN = "mimic_optout", "mimic_optin", "mimic_retrain"
SECTION_CHARS = 3000  # Slack refuses a view whose section text is longer


def home_view(store: Store, settings: Settings, user_id: str, *, admin: bool,
              notice: str = "") -> dict[str, Any]:
    """The Home view for `user_id`; `notice` (what their last button press did) on top."""
    with store.session() as session:
        person = session.get(User, user_id)
        # Someone the store has not seen yet stands where the workspace's default puts them.
        consents = (may_imitate(person, settings) if person is not None
                    else settings.consent == "opt-out")
        opted_out = person is not None and person.opted_out
        target = Target(f"user:{user_id}", "you")
        messages, chars = corpus_size(session, settings, target)
        chosen = serving(session, target) if consents else None
        figures = status_lines(session, settings) if admin else []
    blocks = [{"type": "header", "text": _plain("mimic")}]
    if notice:
        blocks.append(_section(notice))
    blocks += [
        _section(*_standing(consents, opted_out)),
        _section(f"mimic may learn from *{messages:,}* of your messages ({chars:,} "
                 "characters, public channels only)."),
    ]
    if chosen is not None:
        shared = chosen.row.target == BASE.key  # scored per person in its coverage row
        loss = chosen.coverage.val_loss if shared and chosen.coverage else chosen.row.val_loss
        model = "the workspace model" if shared else "your own model"
        how = f"{quality(loss)} ({loss:.2f} nats/char; lower imitates better)" \
            if loss is not None else "not scored yet"
        blocks.append(_section(f"*You can be mimicked* by {model} v{chosen.row.version}: "
                               f"{how}."))
    elif not consents:
        blocks.append(_section("*Nobody can mimic you.*"))
    elif chars < settings.min_chars:
        blocks.append(_section(f"*Not yet*: mimic needs {settings.min_chars:,} characters of "
                               "your public messages to imitate you."))
    else:
        blocks.append(_section("*Not yet*: the next training learns you "
                               f"({next_training(settings)})."))
    if admin:
        blocks += [
            {"type": "divider"},
            {"type": "header", "text": _plain("For admins")},
            _section("\n".join(figures)),
            {"type": "actions", "elements": [_button(
                "Retrain now", RETRAIN, "primary",
                confirm="Export new messages from Slack and retrain every model whose data "
                        "changed? Only one run goes at a time.")]},
        ]
    return {"type": "home", "blocks": blocks}


def _standing(consents: bool, opted_out: bool) -> tuple[str, dict[str, Any]]:
    """What the viewer's consent is, and the one button that changes it."""
    if consents:
        return ("*You're opted in*: mimic may learn from your public messages and imitate "
                "you.", _button("Opt out", OPT_OUT, "danger",
                                confirm="Nobody will be able to mimic you, and models of you "
                                        "are deleted now. You can opt in again later."))
    why = ("*You're opted out*: nobody can mimic you, and models learn nothing from your "
           "messages." if opted_out else
           "*You're not opted in*: this workspace asks people first, so mimic learns nothing "
           "from your messages and nobody can mimic you.")
    return why, _button("Opt in", OPT_IN, "primary")


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": make_inert(text)}


def _section(text: str, accessory: dict[str, Any] | None = None) -> dict[str, Any]:
    shown = make_inert(text)
    if len(shown) > SECTION_CHARS:  # a long retraining report: its start says what happened
        shown = shown[: SECTION_CHARS - 1] + "…"
    block: dict[str, Any] = {"type": "section", "text": {"type": "mrkdwn", "text": shown}}
    if accessory is not None:
        block["accessory"] = accessory
    return block


def _button(label: str, action_id: str, style: str, *, confirm: str = "") -> dict[str, Any]:
    button: dict[str, Any] = {"type": "button", "text": _plain(label), "action_id": action_id,
                              "style": style}
    if confirm:
        button["confirm"] = {"title": _plain(label), "text": _plain(confirm),
                             "confirm": _plain(label), "deny": _plain("Cancel")}
    return button
