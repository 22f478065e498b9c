"""A small synthetic workspace with distinct voices, for training tests: alice shouts about
cats, bob whispers about boats, carol is in a private channel only."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tests.slack_export import msg, write_export

ALICE = ["CATS ARE GREAT!!", "I LOVE MY CAT SO MUCH!!", "WHO WANTS TO SEE CAT PICS!!",
         "MY CAT IS ASLEEP AGAIN!!", "CATS RULE THE WORLD!!"]
BOB = ["the boat is slow today", "i think the sea is calm", "my boat needs new paint",
       "we sailed to the island", "the tide is out now"]
CANARY = "canary-{}-private-xq"


def build(root: Path, messages_per_user: int = 120, seed: int = 0) -> Path:
    rng = random.Random(seed)
    days: dict[str, list[dict[str, Any]]] = {}
    t = 1_650_000_000
    for i in range(messages_per_user):
        for user, lines, channel in (("U1", ALICE, "general"), ("U2", BOB, "random")):
            t += 37
            day = f"{channel}/2022-04-{15 + (i * 10) // messages_per_user:02d}"
            days.setdefault(day, []).append(
                msg(f"{t}.000100", rng.choice(lines), user=user))
        t += 11
        days.setdefault("secret/2022-04-15", []).append(
            msg(f"{t}.000100", CANARY.format(i), user="W3"))
    return write_export(root, extra_days=days)
