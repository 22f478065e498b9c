"""Slack identifiers, checked wherever they come in from outside (an export, the Web API, an
event, a request). Ids become registry folder names and database keys, so anything that is
not Slack-shaped (`U1/../../victim`) is refused at the boundary, never used."""

from __future__ import annotations

import re

# Users (U…, W…), channels (C…, G…, D…), teams, bots: upper-case letters and digits only.
# 32 is the store's column width.
SLACK_ID = re.compile(r"[A-Z0-9]{1,32}")


def is_slack_id(value: object) -> bool:
    return isinstance(value, str) and SLACK_ID.fullmatch(value) is not None
