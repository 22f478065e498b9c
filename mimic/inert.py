"""The one place that makes generated text unable to ping anyone on Slack.

Slack turns `<@U…>`, `<!here>`, `<#C…>`, `<!subteam^…>` and friends into mentions, and with
link_names also bare `@here` / `@name`. We escape `&`, `<`, `>` as Slack's own entities so
any markup shows literally, and put a WORD JOINER (U+2060, invisible, zero-width) after
every at sign so no `@word` can be parsed as a mention. Run it on every generated text.
"""

from __future__ import annotations

import re

WORD_JOINER = "\u2060"
# ASCII @, fullwidth ＠ and small ﹫: Slack (or a client) may fold the variants to '@'.
AT_SIGNS = "@\uff20\ufe6b"
_AT = re.compile(f"([{AT_SIGNS}])")
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def make_inert(text: str) -> str:
    """Return `text` as Slack will display it literally, with no possible notification."""
    # & first (translate does all three in one pass, so entities are never double-escaped).
    return _AT.sub(r"\1" + WORD_JOINER, text.translate(_ESCAPES))
