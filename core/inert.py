"""The one place that makes generated text unable to ping anyone on Slack.

Slack turns `<@U…>`, `<!here>`, `<#C…>`, `<!subteam^…>` and friends into mentions, and with
link_names also bare `@here` / `@name`. We escape `&`, `<`, `>` as Slack's own entities so
any markup shows literally, and put a WORD JOINER (U+2060, invisible, zero-width) after
every at sign so no `@word` can be parsed as a mention.

It is idempotent (an existing entity or joiner is left alone), so the bot can run it once
more on every reply at the Slack boundary, whatever was made inert before.
"""

from __future__ import annotations

import re

WORD_JOINER = "\u2060"
# ASCII @, fullwidth ＠ and small ﹫: Slack (or a client) may fold the variants to '@'.
AT_SIGNS = "@\uff20\ufe6b"
_AT = re.compile(f"([{AT_SIGNS}])(?!{WORD_JOINER})")
# An & that already starts one of Slack's three entities stays: Slack shows it literally.
_SPECIAL = re.compile(r"&(?!(?:amp|lt|gt);)|<|>")
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def make_inert(text: str) -> str:
    """Return `text` as Slack will display it literally, with no possible notification."""
    escaped = _SPECIAL.sub(lambda m: _ESCAPES[m.group()], text)
    return _AT.sub(r"\1" + WORD_JOINER, escaped)


def plain(text: str) -> str:
    """What `make_inert` made inert, as it was written (for reading it back into a model,
    which never saw entities or joiners): the inverse on its output."""
    unjoined = re.sub(f"([{AT_SIGNS}]){WORD_JOINER}", r"\1", text)
    return unjoined.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
