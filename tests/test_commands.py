"""The /mimic grammar: every documented form, every error, and a property over any text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimic.bot.commands import (
    DEFAULT_TEMPERATURE,
    MAX_TURNS,
    MAX_VOICES,
    Conversation,
    ListTargets,
    Mimic,
    OptOut,
    ParseError,
    Retrain,
    Simple,
    TargetRef,
    parse,
)

ALICE = TargetRef("@", name="alice")
BOB = TargetRef("@", name="bob")


@pytest.mark.parametrize(("text", "command"), [
    ("@alice", Mimic(ALICE)),
    ("  @alice  ", Mimic(ALICE)),
    ("<@U123|alice>", Mimic(TargetRef("@", name="alice", id="U123"))),
    ("<@U123>", Mimic(TargetRef("@", id="U123"))),
    ("<@W9ABC|Alice Archer>", Mimic(TargetRef("@", name="Alice Archer", id="W9ABC"))),
    ("#random", Mimic(TargetRef("#", name="random"))),
    ("<#C123|random>", Mimic(TargetRef("#", name="random", id="C123"))),
    ("<#C123>", Mimic(TargetRef("#", id="C123"))),
    ("#random temp=1.0", Mimic(TargetRef("#", name="random"), 1.0)),
    ("@alice t=0.5", Mimic(ALICE, 0.5)),
    ("@alice Temperature=2", Mimic(ALICE, 2.0)),
    ('@alice "I think we should"', Mimic(ALICE, DEFAULT_TEMPERATURE, "I think we should")),
    ('@alice “I think we should” temp=1.2', Mimic(ALICE, 1.2, "I think we should")),
    ("@alice temp=0.3 'hey there'", Mimic(ALICE, 0.3, "hey there")),
    ("@alice @bob", Conversation((ALICE, BOB))),
    ("@alice @bob turns=2", Conversation((ALICE, BOB), 2)),
    ('<@U1|alice> #random TURNS=8 t=1.5 "cats?"',
     Conversation((TargetRef("@", name="alice", id="U1"), TargetRef("#", name="random")), 8,
                  1.5, "cats?")),
    ("@alice @bob @carol @dave", Conversation(
        (ALICE, BOB, TargetRef("@", name="carol"), TargetRef("@", name="dave")))),
    ("@alice #alice", Conversation((ALICE, TargetRef("#", name="alice")))),  # two voices
    ("<@U1|alice> <@U2|alice>", Conversation(  # ids differ: two people, whatever the names
        (TargetRef("@", name="alice", id="U1"), TargetRef("@", name="alice", id="U2")))),
    ("", Simple("help")),
    ("help", Simple("help")),
    ("LIST", ListTargets()),
    ("list alice", ListTargets("alice")),
    ("list @Quiet Stork", ListTargets("Quiet Stork")),
    ("status", Simple("status")),
    ("optin", Simple("optin")),
    ("optout", OptOut()),
    ("optout --forget", OptOut(forget=True)),
    ("retrain", Retrain()),
    ("retrain all", Retrain()),
    ("retrain @alice", Retrain(ALICE)),
    ("retrain <#C1|general>", Retrain(TargetRef("#", name="general", id="C1"))),
])
def test_documented_forms(text: str, command: object) -> None:
    assert parse(text) == command


@pytest.mark.parametrize(("text", "message"), [
    ("@alice temp=0", "out of range"),
    ("@alice temp=-1", "out of range"),
    ("@alice temp=2.5", "out of range"),
    ("@alice temp=nan", "out of range"),
    ("@alice temp=hot", "not a temperature"),
    ("@alice temp=", "not a temperature"),
    ('@alice "unclosed', "unclosed quote"),
    ("@alice I think", "Put the seed text in quotes"),
    ('@alice "one" "two"', "only one seed text"),
    ("alice", "start with a person"),
    ('"just a seed"', "start with a person"),
    ("@", "start with a person"),
    ("help me", "takes nothing after it"),
    ("list " + "a" * 41, "at most 40 characters"),
    ("optout now", "optout --forget"),
    ("retrain bob", "retrain @person"),
    ("@alice \"" + "x" * 300 + "\"", "keep it under"),
    ("@a @b @c @d @e", f"at most {MAX_VOICES} people"),
    ("@alice @bob turns=9", f"at most {MAX_TURNS} turns"),
    ("@alice @bob turns=0", "too few for 2 voices"),
    ("@alice @bob @carol turns=2", "too few for 3 voices"),
    ("@alice @bob turns=four", "not a number"),
    ("@alice @bob turns=2.5", "not a number"),
    ("@alice @bob turns=", "not a number"),
    ("@alice @bob turns=-1", "not a number"),
    ("@alice @Alice", "@Alice is named twice"),
    ("<@U1|alice> <@U1>", "@U1 is named twice"),
    ("<@U1|alice> @alice", "@alice is named twice"),
    ("@alice turns=2", "`turns=` is for a conversation"),
    ("@alice temp=1 @bob", "Name everyone first"),
    ('@alice @bob "one" "two"', "only one seed text"),
    ('@alice @bob "x\ny"', "on one line"),
    ("@alice @bob temp=3", "out of range"),
])
def test_errors_say_what_to_type(text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse(text)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from('@#<>|"“”\' =.-tempU1C2abc \n\t') | st.characters(),
               max_size=80))
def test_any_text_parses_or_explains(text: str) -> None:
    try:
        command = parse(text)
    except ParseError as exc:
        assert str(exc) and "Traceback" not in str(exc)
    else:
        assert isinstance(command, Mimic | Conversation | Simple | ListTargets | OptOut
                          | Retrain)
        if isinstance(command, Mimic | Conversation):
            assert 0 < command.temperature <= 2
        if isinstance(command, Conversation):
            assert 2 <= len(command.targets) <= MAX_VOICES
            assert len(command.targets) <= command.turns <= MAX_TURNS
