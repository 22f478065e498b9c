"""How long a model's replies run: the factor on the end mark's odds, fitted when the shared
model is trained so that its replies are as long as its people's messages.

Replies are drawn sharper than the person writes (BOOST, DEFAULT_TEMPERATURE), and sharper
wording rarely reaches the places people stop. How much longer it runs depends on the model
and the workspace: at END_ODDS (x1.2), the 20 biggest senders of chitchat got replies of 54
characters against their 52, Shakespeare's 20 biggest speakers 167 against 118 (a model that
gives them the same voice but not the same length). So the trainer draws replies for
people of every size (OTHERS of them spread over the workspace's, `spread`), after their own
last messages as the bot does, and moves the factor until the mean length (each person alike)
matches theirs (as they write now: `expected_length`): seconds on CPU (chitchat's 36).
(Fitted to the biggest senders instead, who get factors of their own anyway, chitchat's small
people's replies ran 12 % short of their held-out messages.)

The mean length of replies falls with the factor, roughly as factor^-s for some s between 0.2
and 1 (each doubling of the end's odds shortens a message less where the model rarely sees an
end coming). The search assumes s = 1, then fits s to everything it measured (`slope`).

One factor fits the people on average, not each of them: at chitchat's x1.20, the 20 biggest
senders it was fitted to wrote 52.0 characters against their 52.3 (2,000 replies), but one of
them 45 % short and another 29 % long, and `mimic eval`'s top 10 ran 5-11 % long (57, 57, 56
characters against 56 with their own factors, 59-62 without; BENCHMARKS.md). So the PEOPLE
biggest senders get a fit of their own, which then draws OWN_REPLIES for each of them with
OWN_MESSAGES or more and gives each their own factor on it: (their replies' mean / their
messages')^(1/s), within OWN_RANGE, corrected once more from a second draw at it
(OWN_ROUNDS); restated on the workspace's factor, these are the
`own_odds` kept by lengths.json (`fit_workspace`). Their replies are drawn to an end past
where their own long messages start (`own_long`), not the workspace's: a person whose messages
often run past the workspace's long length could not get replies that long at any factor.

Before their lengths, the same people's variety is checked (`narrower`): drawn at the full
boost, a few of them write their favourite words over and over (chitchat's quiet_stork: "Its just
actually those them that one of the papers are just seem in anything thing its just that"),
so whoever's replies hold fewer distinct word pairs than VARIETY x their own messages' gets a
lower boost of their own (`own_boost`), and then their length factor at it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any

import torch

from mimic.trainer.reading import long_length, pairs
from mimic.trainer.registry import LoadedModel
from mimic.trainer.report import PRIMING
from mimic.trainer.sampler import END_ODDS, LONG_QUANTILE, MAX_LEN, Row, sample_rows

PEOPLE = 20  # the people with the most text, each weighted alike
REPLIES = 400  # drawn per measurement, in one batch: their mean length within ~5 %
MEASUREMENTS = 5
# Everyone else's factor is fitted to OTHERS people spread over the rest by size, OTHER_REPLIES
# a measurement: small people's lengths vary more. (At REPLIES, their measured means did not
# always fall as the factor rose; at 20 people and 800, two fits of the same chitchat model,
# at temperatures 1.3 and 1.35, ended at x0.81 and x0.98, and 100 other people with 1-20k
# characters got replies of 62 and 57 characters against their 60: BENCHMARKS.md.)
OTHERS, OTHER_REPLIES = 40, 4 * REPLIES
OWN_REPLIES = 100  # drawn per person at the fitted factor: their mean within ~10 %
# ... for people whose own mean length is known that well too (to ~15 %: messages run about
# as long on average as their spread): with fewer messages, the shared factor is as good a guess.
OWN_MESSAGES = 50
OWN_RANGE = (0.25, 4.0)  # a person's own factor stays in this range
# Each person's factor is corrected this many times, drawing OWN_REPLIES at the last: one step
# along the group's slope left chitchat's 20 biggest senders 4.6 % short of their training
# messages (a person's own slope differs from the group's); two: 0.7 % long (BENCHMARKS.md).
OWN_ROUNDS = 2
# People's messages lengthen or shorten over time, and a reply should run as long as theirs do
# now: each person's length is the mean of all their messages and of their newest RECENT, half
# and half (`expected_length`). Over chitchat's 10 (20, 40) biggest senders it came within 9.9 %
# (11.6, 12.6) of each one's held-out (newest 10 %) messages' mean, all their training messages
# within 13.2 % (14.8, 13.8), the newest 200 alone 13.3 % (14.7, 15.5) (BENCHMARKS.md,
# twenty-first session).
RECENT = 200
LONG_MESSAGES = 100  # a person's own long length is read from this many messages (5 past it)
# A fitted person whose replies hold fewer distinct word pairs than this share of their own
# messages' (as many pairs of each) is drawn at BOOST_STEP x the boost, again after a second
# look while still narrower, up to BOOST_ROUNDS times (`narrower`). On chitchat's 10 biggest
# senders (`bench.drawing`'s draws per person, 2 seeds), two wrote 0.65 and 0.70 against their
# 0.85 at the full boost of 3, 0.74 and 0.76 at 2, 0.76 and 0.76 at 1.33, at the same fidelity
# (1.00): so two steps, and the first does most. Issue 13 asks distinct-2 within 10 % of the
# people's.
VARIETY = 0.9
BOOST_STEP, BOOST_ROUNDS = 2 / 3, 2
CLOSE = 0.03  # stop when the mean is this close (relative)
SLOPE = (0.2, 2.0)  # the range of s believed (a flat or rising measurement is noise)
ODDS = (0.25, 64.0)  # the factors tried stay in this range


@dataclass(frozen=True)
class Fit:
    end_odds: float
    length: float  # the replies' mean length at end_odds
    target: float  # the people's
    measured: tuple[tuple[float, float], ...]  # (factor, mean length) in the order tried
    own_odds: dict[str, float] = field(default_factory=dict)  # "user:U1" -> x end_odds
    own_boost: dict[str, float] = field(default_factory=dict)  # "user:U1" -> a lower boost
    biggest: Fit | None = None  # the biggest senders' own fit, when end_odds is everyone else's

    def record(self) -> dict[str, Any]:
        """What lengths.json keeps of the fit, for people to read."""
        return {"target": round(self.target, 1), "length": round(self.length, 1),
                "measured": [[round(odds, 3), round(mean, 1)] for odds, mean in self.measured],
                **({"biggest": self.biggest.record()} if self.biggest else {})}

    def describe(self) -> str:
        if self.biggest is not None:
            return (f"{replace(self, own_odds={}, own_boost={}, biggest=None).describe()} of "
                    "every size; "
                    f"for the biggest senders, {self.biggest.describe()}")
        own = (f"; each of those {len(self.own_odds)} people's own x"
               f"{min(self.own_odds.values()):.2f}-{max(self.own_odds.values()):.2f} of it"
               if self.own_odds else "")
        if self.own_boost:
            own += (f", {len(self.own_boost)} of them drawn at a lower boost for their variety "
                    f"({', '.join(f'{b:g}' for b in sorted(self.own_boost.values()))})")
        return (f"replies end at x{self.end_odds:.2f} the model's odds: {self.length:.0f} "
                f"characters against the people's {self.target:.0f}{own}")


def spread(people: Sequence[str], k: int = PEOPLE) -> list[str]:
    """`k` of `people` (most text first), evenly spaced over them, the first and last too."""
    k = min(k, len(people))
    return [people[i * (len(people) - 1) // max(1, k - 1)] for i in range(k)]


def _points(measured: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(math.log(odds), math.log(mean)) for odds, mean in measured if mean > 0]


def slope(measured: Sequence[tuple[float, float]]) -> float:
    """s in mean length ~ factor^-s, fitted by least squares over every (factor, mean length)
    measured, within SLOPE; 1 until two factors were tried. Over all of them, not the last
    two: means of a few hundred replies are noisy (chitchat's measured 45.5 characters at
    x1.11 and 48.5 at x1.2), and a slope from two of them sent the search the wrong way."""
    points = _points(measured)
    if len({x for x, _y in points}) < 2:
        return 1.0
    mx, my = statistics.mean(x for x, _y in points), statistics.mean(y for _x, y in points)
    s = -sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _y in points)
    return min(SLOPE[1], max(SLOPE[0], s))


def aim(measured: Sequence[tuple[float, float]], target: float) -> float:
    """The factor to try next: where the line fitted through every measurement (`slope`)
    meets the target length, so that each mean's noise is averaged with the others'."""
    points, s = _points(measured), slope(measured)
    if not points:  # nothing but empty replies: the end is far too likely
        return ODDS[0]
    mx, my = statistics.mean(x for x, _y in points), statistics.mean(y for _x, y in points)
    return math.exp(mx + (my - math.log(target)) / s)


def own_factor(mine: float, wanted: float, s: float, drawn_at: float = 1.0) -> float:
    """A person's factor on the fitted one, where their replies ran `mine` characters at
    `drawn_at` against their messages' `wanted`: on the slope s fitted over every measurement.
    (Taken as 1, where s is about 0.44 on chitchat, it moved their replies less than half of
    the way.) Within OWN_RANGE: at a small s, a mean's noise is blown up by 1/s."""
    factor = drawn_at * (max(mine, 0.1) / wanted) ** (1 / s)
    return round(min(OWN_RANGE[1], max(OWN_RANGE[0], factor)), 3)


def mean_length(texts: Sequence[str]) -> float:
    """The mean length of `texts` (at least one), each longer than the cut counted as that
    long: no reply can be longer."""
    return statistics.mean(min(len(t), MAX_LEN) for t in texts)


def expected_length(texts: Sequence[str]) -> float:
    """How long a person's messages (oldest first, at least one) run now: the mean of all and
    of the newest RECENT, half and half (`mean_length`)."""
    return max(1.0, (mean_length(texts) + mean_length(texts[-RECENT:])) / 2)


def own_long(people: Sequence[tuple[str, Sequence[str]]]) -> dict[str, int]:
    """Where each of `people` with LONG_MESSAGES or more messages has long ones: the length
    LONG_QUANTILE of theirs stay within, past which their replies are drawn to an end in place
    of the workspace's (LoadedModel.own_long). At the workspace's, chitchat's biggest senders
    who often write past its 149 characters (13 % of their messages, a third of their
    characters) could not get replies that long at any factor on the end's odds."""
    return {f"user:{user}": long_length(texts, LONG_QUANTILE)
            for user, texts in people if len(texts) >= LONG_MESSAGES}


def narrower(replies: Sequence[str], messages: Sequence[str]) -> bool:
    """Whether `replies` hold fewer distinct word pairs than VARIETY x a person's `messages`
    (oldest first), counted over as many pairs of each: all of the replies', their newest.
    Variety falls as more pairs are counted, so the replies' length does not tip it."""
    mine = [p for text in replies for p in pairs(text)]
    theirs = list(islice((p for text in reversed(messages) for p in pairs(text)), len(mine)))
    if not theirs:  # no word pairs to tell by
        return False
    return len(set(mine[: len(theirs)])) < VARIETY * len(set(theirs))


def lowered_boosts(rows: Sequence[Row], messages: Sequence[Sequence[str]],
                   draw: Callable[[Sequence[Row]], list[list[str]]]) -> list[float]:
    """Each row's boost, times BOOST_STEP while the replies `draw` gives it (a list of texts
    for each row asked) are `narrower` than its person's `messages` (oldest first), at most
    BOOST_ROUNDS times: the last step is taken without a look after it."""
    boosts = [row.boost for row in rows]
    looked = [j for j, boost in enumerate(boosts) if boost > 0]
    for _ in range(BOOST_ROUNDS):
        if not looked:
            break
        replies = draw([replace(rows[j], boost=boosts[j]) for j in looked])
        looked = [j for j, texts in zip(looked, replies, strict=True)
                  if narrower(texts, messages[j])]
        for j in looked:
            boosts[j] = round(boosts[j] * BOOST_STEP, 3)
    return boosts


def fit_workspace(loaded: LoadedModel, biggest: Sequence[tuple[str, Sequence[str]]],
                  others: Sequence[tuple[str, Sequence[str]]]) -> Fit:
    """`fit_end_odds` for a workspace: its factor is for everyone without one of their own, so
    it is fitted to `others` (people spread over the workspace's sizes: fitted to the biggest
    senders, chitchat's small people's replies ran 12 % short of their held-out messages);
    `biggest` get their own factors as fitted to them, restated on it. Without `others`, the
    biggest senders' fit."""
    top = fit_end_odds(loaded, biggest)
    if not others:
        return top
    # Starting where the biggest senders' factor is, not at END_ODDS: chitchat's took four
    # measurements from x1.2 to x0.85 (a minute of the trainer's time), two from there.
    rest = fit_end_odds(loaded, others, replies=OTHER_REPLIES, own_replies=0,
                        start=top.end_odds)
    # The same odds for the biggest senders as their own fit gives them (their factors stay
    # where OWN_RANGE put them there).
    own = {key: round(x * top.end_odds / rest.end_odds, 3) for key, x in top.own_odds.items()}
    return replace(rest, own_odds=own, own_boost=top.own_boost, biggest=top)


def fit_end_odds(loaded: LoadedModel, people: Sequence[tuple[str, Sequence[str]]], *,
                 replies: int = REPLIES, own_replies: int = OWN_REPLIES, seed: int = 0,
                 start: float = END_ODDS) -> Fit:
    """The end-odds factor under which `loaded`'s replies for `people` ((user id, their
    messages oldest first), at least one) are on average as long as their messages run now
    (`expected_length`), each person's mean counted alike, and each person's own factor on it
    (`own_odds`). Replies are drawn as the bot draws them, with the same seed for every factor
    tried (so that the factors, not the draws, make the difference); the first factor tried is
    `start`."""
    if not people:
        raise ValueError("fit_end_odds needs at least one person")
    rows = [loaded.row(f"user:{user}", context=[(user, t) for t in texts[-PRIMING:]])
            for user, texts in people]
    theirs = [expected_length(texts) for _user, texts in people]
    target = statistics.mean(theirs)

    drawn_before: dict[tuple[tuple[Row, ...], int], list[list[str]]] = {}

    def draw(whose: Sequence[Row], each: int) -> list[list[str]]:
        """`each` replies for each of `whose` rows; the same rows again, from the same seed, are
        the same replies (the first length round of people whose boost stays redraws the
        variety round's)."""
        key = (tuple(whose), each)
        if key not in drawn_before:
            drawn = sample_rows(loaded.model, loaded.vocab, [row for row in whose
                                                             for _ in range(each)],
                                reference=loaded.reference, guard=loaded.guard,
                                generator=torch.Generator().manual_seed(seed))
            drawn_before[key] = [drawn[i : i + each] for i in range(0, len(drawn), each)]
        return drawn_before[key]

    def lengths(whose: Sequence[Row], each: int) -> list[float]:
        """The mean length of `each` replies of each of `whose` rows, at their end odds."""
        return [statistics.mean(len(t) for t in texts) for texts in draw(whose, each)]

    def mean_length(odds: float) -> float:
        return statistics.mean(lengths([replace(row, end_odds=odds) for row in rows],
                                       max(1, replies // len(people))))

    measured: list[tuple[float, float]] = []
    odds = start
    for _ in range(MEASUREMENTS):
        measured.append((odds, mean_length(odds)))
        if abs(measured[-1][1] / target - 1) <= CLOSE:
            break
        then = min(ODDS[1], max(ODDS[0], aim(measured, target)))
        if then == odds:  # at the edge of the range: as close as it gets
            break
        odds = then
    best = min(measured, key=lambda m: abs(math.log(max(m[1], 0.1) / target)))
    s = slope(measured)
    known = [i for i, (_user, texts) in enumerate(people) if len(texts) >= OWN_MESSAGES]
    factors = dict.fromkeys(known if own_replies else [], 1.0)
    # Their variety first, at the shared factor: their lengths are fitted at the boost they keep.
    lowered = lowered_boosts([replace(rows[i], end_odds=best[0]) for i in factors],
                             [people[i][1] for i in factors],
                             lambda whose: draw(whose, own_replies))
    boosts = {i: boost for i, boost in zip(factors, lowered, strict=True)
              if boost != rows[i].boost}
    for i, boost in boosts.items():
        rows[i] = replace(rows[i], boost=boost)
    for _ in range(OWN_ROUNDS if factors else 0):
        drawn = lengths([replace(rows[i], end_odds=best[0] * factors[i]) for i in factors],
                        own_replies)
        factors = {i: own_factor(mine, theirs[i], s, factors[i])
                   for i, mine in zip(factors, drawn, strict=True)}
    own = {f"user:{people[i][0]}": factor for i, factor in factors.items()}
    return Fit(round(best[0], 3), best[1], target, tuple(measured), own,
               {f"user:{people[i][0]}": boost for i, boost in boosts.items()})
