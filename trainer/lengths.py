"""How long a model's replies run: the factor on the end mark's odds, fitted when the shared
model is trained so that its replies are as long as its people's messages.

Replies are drawn sharper than the person writes (BOOST, DEFAULT_TEMPERATURE), and sharper
wording rarely reaches the places people stop. How much longer it runs depends on the model
and the workspace: at END_ODDS (x1.2), the 20 biggest senders of chitchat got replies of 54
characters against their 52, Shakespeare's 20 biggest speakers 167 against 118 (a model that
gives them the same voice but not the same length). So the trainer draws replies for the
people with the most text, after their own last messages as the bot does, and moves the factor
until the mean length (each person alike) matches theirs: a few seconds on CPU.

The mean length of replies falls with the factor, roughly as factor^-s for some s between 0.1
and 1 (each doubling of the end's odds shortens a message less where the model rarely sees an
end coming). The search assumes s = 1, then fits s to what it measured.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from mimic.trainer.registry import LoadedModel
from mimic.trainer.report import PRIMING
from mimic.trainer.sampler import END_ODDS, MAX_LEN, sample_rows

PEOPLE = 20  # the people with the most text, each weighted alike
REPLIES = 400  # drawn per measurement, in one batch: their mean length within ~5 %
MEASUREMENTS = 5
CLOSE = 0.03  # stop when the mean is this close (relative)
ODDS = (0.25, 64.0)  # the factors tried stay in this range


@dataclass(frozen=True)
class Fit:
    end_odds: float
    length: float  # the replies' mean length at end_odds
    target: float  # the people's
    measured: tuple[tuple[float, float], ...]  # (factor, mean length) in the order tried

    def record(self) -> dict[str, Any]:
        """What lengths.json keeps of the fit, for people to read."""
        return {"target": round(self.target, 1), "length": round(self.length, 1),
                "measured": [[round(odds, 3), round(mean, 1)] for odds, mean in self.measured]}

    def describe(self) -> str:
        return (f"replies end at x{self.end_odds:.2f} the model's odds: {self.length:.0f} "
                f"characters against the people's {self.target:.0f}")


def fit_end_odds(loaded: LoadedModel, people: Sequence[tuple[str, Sequence[str]]], *,
                 replies: int = REPLIES, seed: int = 0) -> Fit:
    """The end-odds factor under which `loaded`'s replies for `people` ((user id, their
    messages oldest first), at least one) are on average as long as their messages, each
    person's mean counted alike. Replies are drawn as the bot draws them, with the same seed
    for every factor tried (so that the factors, not the draws, make the difference)."""
    if not people:
        raise ValueError("fit_end_odds needs at least one person")
    each = max(1, replies // len(people))
    rows = [loaded.row(f"user:{user}", context=[(user, t) for t in texts[-PRIMING:]])
            for user, texts in people]
    # Messages longer than the cut count as that long: no reply can be longer.
    target = max(1.0, statistics.mean(statistics.mean(min(len(t), MAX_LEN) for t in texts)
                                      for _user, texts in people))

    def mean_length(odds: float) -> float:
        drawn = sample_rows(loaded.model, loaded.vocab,
                            [replace(row, end_odds=odds) for row in rows for _ in range(each)],
                            reference=loaded.reference, guard=loaded.guard,
                            generator=torch.Generator().manual_seed(seed))
        return statistics.mean(statistics.mean(len(t) for t in drawn[i : i + each])
                               for i in range(0, len(drawn), each))

    measured: list[tuple[float, float]] = []
    odds, s = END_ODDS, 1.0
    for _ in range(MEASUREMENTS):
        measured.append((odds, mean_length(odds)))
        if abs(measured[-1][1] / target - 1) <= CLOSE:
            break
        if len(measured) > 1:
            (a, la), (b, lb) = measured[-2:]
            if a != b and la > 0 and lb > 0 and la != lb:
                s = min(2.0, max(0.2, -math.log(lb / la) / math.log(b / a)))
        then = min(ODDS[1], max(ODDS[0], odds * (measured[-1][1] / target) ** (1 / s)))
        if then == odds:  # at the edge of the range: as close as it gets
            break
        odds = then
    best = min(measured, key=lambda m: abs(math.log(max(m[1], 0.1) / target)))
    return Fit(round(best[0], 3), best[1], target, tuple(measured))
