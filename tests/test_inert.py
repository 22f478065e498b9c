"""make_inert: no generated text may notify anyone on Slack."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mimic.core.inert import WORD_JOINER, make_inert

WJ = WORD_JOINER


@pytest.mark.parametrize(
    ("raw", "inert"),
    [
        ("hi <@U012ABCDEF>", "hi &lt;@" + WJ + "U012ABCDEF&gt;"),
        ("<@W0123ABC|bob>", "&lt;@" + WJ + "W0123ABC|bob&gt;"),
        ("<!channel> lunch", "&lt;!channel&gt; lunch"),
        ("<!here|here>", "&lt;!here|here&gt;"),
        ("<!everyone>", "&lt;!everyone&gt;"),
        ("<!subteam^S012AB|@devs>", "&lt;!subteam^S012AB|@" + WJ + "devs&gt;"),
        ("see <#C012AB|general>", "see &lt;#C012AB|general&gt;"),
        ("<https://x.y|click>", "&lt;https://x.y|click&gt;"),
        ("<mailto:a@b.c>", "&lt;mailto:a@" + WJ + "b.c&gt;"),
        ("<!date^1392734382^{date}|x>", "&lt;!date^1392734382^{date}|x&gt;"),
        ("@channel", "@" + WJ + "channel"),
        ("@here now", "@" + WJ + "here now"),
        ("@Everyone", "@" + WJ + "Everyone"),
        ("@HERE", "@" + WJ + "HERE"),
        ("ping @bob.smith", "ping @" + WJ + "bob.smith"),
        ("＠channel", "＠" + WJ + "channel"),
        ("﹫here", "﹫" + WJ + "here"),
        ("a@@b", "a@" + WJ + "@" + WJ + "b"),
        ("&lt;!channel&gt;", "&lt;!channel&gt;"),  # already an entity: Slack shows it as text
        ("@" + WJ + "here", "@" + WJ + "here"),  # already inert
        ("fish & chips > 3 < 4", "fish &amp; chips &gt; 3 &lt; 4"),
        ("plain text", "plain text"),
        ("", ""),
    ],
)
def test_markup_table(raw: str, inert: str) -> None:
    assert make_inert(raw) == inert


NOTIFYING = re.compile(r"[@＠﹫]\w", re.UNICODE)


@given(st.text())
def test_nothing_can_notify(text: str) -> None:
    out = make_inert(text)
    assert "<" not in out and ">" not in out
    assert not NOTIFYING.search(out)
    # Every & starts one of our entities, so Slack cannot decode a hidden '<' either.
    assert "&" not in re.sub("&(amp|lt|gt);", "", out)


@given(
    st.lists(
        st.sampled_from(
            [
                "<",
                ">",
                "&",
                "@",
                "!",
                "here",
                "channel",
                "U1",
                "#C1",
                "^",
                "|",
                "＠",
                "lt;",
                "gt;",
                "amp;",
                " ",
            ]
        )
    ).map("".join)
)
def test_markup_soup(text: str) -> None:
    out = make_inert(text)
    assert "<" not in out and not NOTIFYING.search(out)
    assert make_inert(out) == out  # idempotent: safe to apply again at the Slack boundary
    # What Slack displays (entities decoded once) is the original text, minus the joiners.
    shown = re.sub("&(amp|lt|gt);", lambda m: {"amp": "&", "lt": "<", "gt": ">"}[m[1]], out)
    assert shown.replace(WJ, "") == re.sub(
        "&(amp|lt|gt);", lambda m: {"amp": "&", "lt": "<", "gt": ">"}[m[1]], text)


@given(st.text(alphabet=st.sampled_from("ab @＠﹫<>&;!#|:ltgmp\n"), max_size=40))
def test_plain_undoes_inert(text: str) -> None:
    """What a model wrote is read back as it wrote it (a conversation's earlier turns):
    exactly, unless it already held one of Slack's entities, which make_inert keeps."""
    from mimic.core.inert import plain

    if not any(entity in text for entity in ("&amp;", "&lt;", "&gt;")):
        assert plain(make_inert(text)) == text
