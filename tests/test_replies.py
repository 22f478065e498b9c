"""What /mimic answers, through the plain functions the Slack listener calls (real models)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import func, select

from mimic.bot.models import ModelCache
from mimic.bot.replies import Reply, Responder
from mimic.core.config import Settings
from mimic.core.store import Coverage, Message, ModelVersion, Store, User, make_engine
from mimic.trainer.corpus import BASE, resolve
from mimic.trainer.registry import active_version, rollback, serving
from mimic.trainer.train import train
from tests import trained

GENERAL, SECRET, RANDOM = "C1", "G1", "C2"
Make = Callable[..., Responder]
PING = re.compile(r"<[@!#]|(?<![\w\u2060])@(?!\u2060)\w")


@pytest.fixture
def responder() -> Iterator[Callable[..., Responder]]:
    """Makes Responders for a world; each is closed (its sampling thread joined) after."""
    made: list[Responder] = []

    def make(world: tuple[Store, Settings], **kw: object) -> Responder:
        store, settings = world
        made.append(Responder(settings, store, ModelCache(settings.data_dir), **kw))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for r in made:
        r.close()


def ask(r: Responder, text: str, user: str = "U2", channel: str = GENERAL) -> Reply:
    return r.handle(user, channel, text)


def test_mimic_posts_a_labelled_inert_message(
        responder: Make, world: tuple[Store, Settings]) -> None:
    reply = ask(responder(world), "@alice temp=0.5")
    header, body = reply.text.split("\n", 1)
    assert reply.public
    assert "mimicking @\u2060alice · temp 0.5 · the workspace model v1" in header
    assert "generated" in header
    assert body.startswith(">") and len(body) > 1
    assert not PING.search(reply.text)


def test_escaped_mentions_and_seed_text(responder: Make, world: tuple[Store, Settings]) -> None:
    r = responder(world)
    assert "mimicking #general" in ask(r, "<#C1|general> t=1.0").text
    reply = ask(r, '<@U1|alice> "MY CAT"')
    assert reply.public and reply.text.split("\n", 1)[1].startswith(">MY CAT")


def test_private_channel_answers_only_inside_itself(
        responder: Make, world: tuple[Store, Settings]) -> None:
    r = responder(world)
    inside = ask(r, "#secret", channel=SECRET)
    assert inside.public and "mimicking #secret" in inside.text
    outside = ask(r, "#secret", channel=GENERAL)
    missing = ask(r, "#secreu", channel=GENERAL)
    assert not outside.public
    # Exactly what a channel that does not exist gets, name aside: nothing reveals it.
    assert outside.text.replace("#secret", "#X") == missing.text.replace("#secreu", "#X")
    assert ask(r, "<#G1|secret>", channel=GENERAL).text.startswith("No channel called")


def test_errors_are_ephemeral_and_say_what_to_do(
        responder: Make, world: tuple[Store, Settings]) -> None:
    r = responder(world)
    cases = {
        "@alice temp=5": "out of range",
        "@nobody": "No person called @nobody",
        "@alicee": "Did you mean @alice",
        "@carol": "I need at least 500",
        "alice": "start with a person",
    }
    for text, expected in cases.items():
        reply = ask(r, text)
        assert not reply.public and expected.lower() in reply.text.lower(), (text, reply)
        assert "Traceback" not in reply.text


def test_a_database_outage_is_named_not_a_failure(
        responder: Make, world: tuple[Store, Settings]) -> None:
    """The store goes away (PostgreSQL down or restarting): every request that needs it is
    told so, ephemerally, without a traceback."""
    _store, settings = world
    gone = Store(make_engine("postgresql://mimic:s3cret@127.0.0.1:1/mimic"))  # nobody there
    r = responder((gone, settings))
    for text in ("@alice", "status", "list", "optout"):
        reply = ask(r, text)
        assert not reply.public and "can't reach its database" in reply.text, (text, reply)
        assert "Traceback" not in reply.text and "s3cret" not in reply.text


def turns_of(reply: Reply) -> tuple[str, list[tuple[str, str]]]:
    """A conversation's header and its (label, text) turns, texts unquoted again."""
    header, *lines = reply.text.split("\n")
    turns: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("*"):
            turns.append((line, []))
        else:
            assert line.startswith(">") and turns, line  # every generated line quoted
            turns[-1][1].append(line[1:])
    return header, [(label, "\n".join(text)) for label, text in turns]


def test_a_conversation_alternates_voices_each_answering_the_turns_before(
        responder: Make, world: tuple[Store, Settings]) -> None:
    store, _settings = world
    r = responder(world)
    reply = ask(r, '@alice @bob turns=4 t=0.8 "MY CAT"')
    header, turns = turns_of(reply)
    assert reply.public and not PING.search(reply.text)
    assert header == ("_a conversation between @\u2060alice and @\u2060bob · temp 0.8 · the "
                      "workspace model v1 · generated text, not real messages_")
    assert [label for label, _ in turns] == ["*@\u2060alice*", "*@\u2060bob*"] * 2
    assert all(text.strip() for _, text in turns)
    assert turns[0][1].startswith("MY CAT")  # the seed opens the first turn only
    # Turn i was drawn after reading turns 0..i-1 by their authors: that context is already
    # in the model's primer, so reading it again adds nothing, while any other would.
    with store.session() as s:
        chosen = serving(s, resolve(s, "@bob"))
    assert chosen is not None
    loaded = r.cache.get(chosen.row, chosen.parent)
    said = [(author, text) for author, (_, text) in zip(["U1", "U2"] * 2, turns, strict=True)]

    def primed(voice: str, context: list[tuple[str, str]]) -> bool:
        before = len(loaded.primer)
        loaded.primer.read(loaded.model, [loaded.row(voice, where=GENERAL,
                                                     context=context).context])
        return len(loaded.primer) == before

    for i in range(1, 4):
        assert primed(f"user:{said[i][0]}", said[:i]), i
    assert not primed("user:U1", said[::-1])


def test_a_conversation_with_a_channel_voice_and_three_voices(
        responder: Make, world: tuple[Store, Settings]) -> None:
    header, turns = turns_of(ask(responder(world), "@bob #random @alice turns=3"))
    assert "between @\u2060bob, #random and @\u2060alice ·" in header
    assert [label for label, _ in turns] == ["*@\u2060bob*", "*#random*", "*@\u2060alice*"]


def test_conversation_errors_are_ephemeral_and_nothing_is_posted(
        responder: Make, world: tuple[Store, Settings]) -> None:
    r = responder(world)
    cases = {
        "@alice @nobody": "No person called @nobody",
        "@alice @U1": "@alice is named twice",  # two names, one person
        "@alice @bob turns=9": "at most 8 turns",
        "@alice @bob @carol @bob @dave": "at most 4 people",
        "@alice @carol": "I need at least 500",
    }
    for text, expected in cases.items():
        reply = ask(r, text, user="U1")
        assert not reply.public and expected in reply.text, (text, reply)
    ask(r, "optout", user="U2")
    refused = ask(r, "@alice @bob", user="U1")
    assert not refused.public and refused.text.startswith("@bob has opted out")


def test_a_conversation_is_one_request_for_the_rate_limit(
        responder: Make, world: tuple[Store, Settings]) -> None:
    store, settings = world
    r = responder((store, settings.model_copy(update={"rate_limit": 2})))
    assert ask(r, "@alice @bob turns=2").public
    assert ask(r, "@alice").public
    assert "2 requests a minute" in ask(r, "@alice @bob turns=2").text


def test_an_internal_failure_is_a_polite_message(
        responder: Make, world: tuple[Store, Settings]) -> None:
    store, settings = world
    with store.session() as s:
        row = active_version(s, BASE.key)  # the workspace model, which serves alice
        assert row is not None
        (settings.data_dir / row.path / "model.pt").write_bytes(b"garbage")
    reply = ask(responder(world), "@alice")
    assert not reply.public and "went wrong on mimic's side" in reply.text


def test_rate_limit_answers_the_sixth_request_with_a_message(responder: Callable[..., Responder],
        world: tuple[Store, Settings]) -> None:
    now = [1000.0]
    r = responder(world)
    r.limiter.clock = lambda: now[0]
    assert all(ask(r, "@alice").public for _ in range(5))
    sixth = ask(r, "@alice")
    assert not sixth.public and "5 requests a minute" in sixth.text
    assert ask(r, "@alice", user="U1").public  # per person
    now[0] += 61
    assert ask(r, "@alice").public


def test_list_hides_private_channels_elsewhere_and_opted_out_people(
        responder: Callable[..., Responder],
        world: tuple[Store, Settings]) -> None:
    r = responder(world)
    public = ask(r, "list").text
    assert "alice" in public and "#general" in public and "#secret" not in public
    assert "#secret" in ask(r, "list", channel=SECRET).text
    ask(r, "optout", user="U2")
    assert "bob" not in ask(r, "list").text


def test_optout_deletes_models_at_once_forget_deletes_messages_optin_restores(
        responder: Callable[..., Responder],
        world: tuple[Store, Settings]) -> None:
    store, settings = world
    r = responder(world)
    with store.session() as s:
        alice = resolve(s, "@alice")
    train(store, settings, alice, train_overrides=trained.QUICK)  # a model of her own too
    reply = ask(r, "optout", user="U1")
    assert "1 model versions of you were deleted" in reply.text
    assert not (settings.data_dir / "models" / "user-U1").exists()
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)
                        .where(ModelVersion.target == "user:U1")) == 0
        # The workspace model keeps her vector until its next run, but nothing serves it.
        assert s.scalar(select(func.count()).select_from(Coverage)
                        .where(Coverage.target == "user:U1")) == 0
        assert serving(s, alice) is None
    refused = ask(r, "@alice", user="U2")
    assert not refused.public and "opted out" in refused.text
    assert "retrained without them" in ask(r, "status").text

    ask(r, "optout --forget", user="U1")
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(Message)
                        .where(Message.user_id == "U1")) == 0
    ask(r, "optin", user="U1")
    with store.session() as s:
        assert not s.get(User, "U1").opted_out  # type: ignore[union-attr]


def test_retrain_is_for_admins_and_one_at_a_time(
        responder: Make, world: tuple[Store, Settings]) -> None:
    store, settings = world
    started: list[object] = []
    busy = [False]

    def start(target: object, followup: object) -> bool:
        if busy[0]:
            return False
        busy[0] = True
        started.append(target)
        return True

    r = responder((store, settings.model_copy(update={"admins": ["U9"]})),
                  is_admin=lambda user: user == "U8", start_retrain=start)
    assert "only mimic's admins" in ask(r, "retrain", user="U2").text
    assert "Retraining everything that changed" in ask(r, "retrain all", user="U9").text
    assert "already going" in ask(r, "retrain @alice", user="U8").text
    busy[0] = False
    assert "Retraining @alice" in ask(r, "retrain @alice", user="U8").text
    assert started[0] is None and started[1].label == "@alice"  # type: ignore[attr-defined]


def test_a_promoted_version_is_served_without_a_restart(
        responder: Make, world: tuple[Store, Settings]) -> None:
    store, settings = world
    r = responder(world)
    assert "the workspace model v1" in ask(r, "@bob").text
    with store.session() as s:
        bob = resolve(s, "@bob")
    outcome = train(store, settings, bob, train_overrides={**trained.QUICK, "max_steps": 90})
    assert outcome.status == "active" and outcome.version == 1
    with store.session() as s:
        chosen = serving(s, bob)
        assert chosen is not None
        mine = chosen.row.target == bob.key  # his own model serves when it does better
        cover = s.get(Coverage, (active_version(s, BASE.key).id, bob.key))  # type: ignore[union-attr]
        assert mine == (outcome.val_after <= cover.val_loss)  # type: ignore[operator,union-attr]
    expected = "their own model v1" if mine else "the workspace model v1"
    assert expected in ask(r, "@bob", user="U1").text
    # A new workspace model is served at once too, without a restart.
    shared = train(store, settings, BASE, train_overrides={**trained.QUICK, "max_steps": 20})
    if shared.status == "active":
        if not mine:
            assert f"the workspace model v{shared.version}" in ask(r, "@bob", user="W3").text
        rollback(store, BASE)
        assert "model v1" in ask(r, "@bob", user="U9").text
