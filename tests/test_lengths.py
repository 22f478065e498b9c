"""The end mark's odds fitted to the people's message lengths (trainer/lengths.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import pytest
import torch

from mimic.trainer.lengths import (
    BOOST_ROUNDS,
    BOOST_STEP,
    LONG_MESSAGES,
    MEASUREMENTS,
    ODDS,
    OWN_MESSAGES,
    OWN_RANGE,
    RECENT,
    SLOPE,
    Fit,
    aim,
    expected_length,
    fit_end_odds,
    fit_workspace,
    lowered_boosts,
    narrower,
    own_factor,
    own_long,
    slope,
    spread,
)
from mimic.trainer.model import CharLSTM, ModelConfig
from mimic.trainer.novelty import NoveltyIndex
from mimic.trainer.registry import LoadedModel
from mimic.trainer.sampler import Row, sample_rows
from mimic.trainer.vocab import Vocab


def ending_at(p: float) -> LoadedModel:
    """A model that ends a message with probability `p` at every character, whatever came
    before: at end-odds factor x its messages are geometric, of mean (1 - e) / e with
    e = p x / (1 + p (x - 1))."""
    vocab = Vocab(list("ab"))
    model = CharLSTM(ModelConfig(len(vocab), embed_dim=4, hidden_size=8, num_layers=1))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.log(torch.tensor([p, 1e-9, (1 - p) / 2, (1 - p) / 2])))
    return LoadedModel(1, 1, model, vocab, NoveltyIndex.build([]))


def test_the_fitted_factor_makes_replies_as_long_as_the_peoples_messages() -> None:
    """People whose messages run 10 characters on average (one 4, one 16): a model that
    ends at 0.2 a character writes 3.3 at the default factor; the fit finds the factor
    (0.4) under which it writes 10, within a few measurements, and is deterministic."""
    loaded = ending_at(0.2)
    people = [("U1", ["ab" * 2, "b" * 4]), ("U2", ["a" * 16])]
    fit = fit_end_odds(loaded, people)
    assert fit.target == 10
    assert abs(fit.length / fit.target - 1) < 0.08
    assert 0.3 < fit.end_odds < 0.55
    assert len(fit.measured) <= MEASUREMENTS
    assert fit_end_odds(loaded, people) == fit
    assert "against the people's 10" in fit.describe()


def test_replies_are_fitted_to_how_long_a_persons_messages_run_now() -> None:
    """A person who wrote 4 characters a message for years and 16 lately: their length is
    the mean of all their messages and of their newest RECENT, half and half (7 and 16:
    11.5), and the fit aims there; without a recent change, the plain mean."""
    steady = ["a" * 10] * (3 * RECENT)
    assert expected_length(steady) == 10
    grew = ["ab" * 2] * (3 * RECENT) + ["a" * 16] * RECENT
    assert expected_length(grew) == pytest.approx((7 + 16) / 2)
    assert expected_length(["a" * 16, "abab"]) == 10  # fewer than RECENT: all of them, once
    fit = fit_end_odds(ending_at(0.2), [("U1", grew)], own_replies=0)
    assert fit.target == pytest.approx(11.5)
    assert abs(fit.length / fit.target - 1) < 0.08


def test_a_length_out_of_reach_stops_at_the_edge_of_the_range() -> None:
    """No factor in range makes a model that ends half the time write 280-character
    messages (longer ones count as the cut): the fit stops at the smallest factor."""
    fit = fit_end_odds(ending_at(0.5), [("U1", ["a" * 400])])
    assert fit.target == 280
    assert fit.end_odds == ODDS[0]
    with pytest.raises(ValueError, match="at least one person"):
        fit_end_odds(ending_at(0.5), [])


def test_each_fitted_person_gets_their_own_factor_on_it() -> None:
    """One factor makes the people's replies 10 characters on average, too long for U1
    (messages of 4) and too short for U2 (16): each gets their own factor on it (`own_factor`,
    corrected over OWN_ROUNDS draws), and the rows the
    bot draws for them end sooner for U1 and later for U2 than for anyone else. U3, with too
    few messages to know their length, keeps the shared factor."""
    loaded = ending_at(0.2)
    people = [("U1", ["ab" * 2, "b" * 4] * (OWN_MESSAGES // 2)), ("U2", ["a" * 16] * OWN_MESSAGES),
              ("U3", ["a" * 10] * (OWN_MESSAGES - 1))]
    fit = fit_end_odds(loaded, people)
    assert set(fit.own_odds) == {"user:U1", "user:U2"}
    assert 1.5 < fit.own_odds["user:U1"] <= OWN_RANGE[1]
    assert 0.45 < fit.own_odds["user:U2"] < 0.8
    assert "own x" in fit.describe()
    served = replace(loaded, end_odds=fit.end_odds, own_odds=fit.own_odds)
    assert served.row("user:U2").end_odds == pytest.approx(fit.end_odds * fit.own_odds["user:U2"])
    assert served.row("user:U9").end_odds == fit.end_odds  # not fitted: the shared factor

    def mean_length(user: str) -> float:
        texts = sample_rows(loaded.model, loaded.vocab, [served.row(user)] * 600,
                            generator=torch.Generator().manual_seed(1))
        return sum(map(len, texts)) / len(texts)

    assert mean_length("user:U1") < 0.8 * mean_length("user:U9") < mean_length("user:U2") * 0.8
    assert fit_end_odds(loaded, [("U1", ["abab"])], own_replies=0).own_odds == {}


def test_a_person_who_writes_past_the_workspaces_long_messages_gets_replies_that_long() -> None:
    """Past the workspace's long length (6 here) a reply is drawn to an end within a few
    characters, so no factor on the end's odds makes U2's replies as long as their messages
    (8-24 characters, 16 on average). Past their own (`own_long`: the length LONG_QUANTILE of
    their messages stay within), their fitted factor does; U1, with too few messages to know
    where theirs stop, keeps the workspace's."""
    people = [("U1", ["ab" * 2] * (LONG_MESSAGES - 1)),
              ("U2", ["a" * n for n in range(8, 25)] * (LONG_MESSAGES // 17 + 1))]
    longs = own_long(people)
    assert longs == {"user:U2": 23}
    workspace = replace(ending_at(0.2), long_message=6)

    def replies_to_u2(loaded: LoadedModel) -> float:
        fit = fit_end_odds(loaded, people)
        served = replace(loaded, end_odds=fit.end_odds, own_odds=fit.own_odds)
        texts = sample_rows(loaded.model, loaded.vocab, [served.row("user:U2")] * 600,
                            generator=torch.Generator().manual_seed(1))
        return sum(map(len, texts)) / len(texts)

    own = replace(workspace, own_long=longs)
    assert own.row("user:U2").long_after == 23 and own.row("user:U1").long_after == 6
    assert replies_to_u2(workspace) < 8  # 6.3
    assert abs(replies_to_u2(own) / 16 - 1) < 0.15  # 17.1


def test_everyone_else_gets_the_factor_fitted_to_people_of_every_size() -> None:
    """The biggest senders write 16 characters, everyone else 4: the workspace's factor makes
    the others' replies 4 long, and each biggest sender's own factor, restated on it, still
    gives them the odds their own fit found. Without others, their fit is the workspace's."""
    loaded = ending_at(0.2)
    biggest = [("U1", ["a" * 16] * OWN_MESSAGES), ("U2", ["ab" * 8] * OWN_MESSAGES)]
    others = [("U3", ["ab" * 2] * 10), ("U4", ["a" * 4] * 10)]
    fit = fit_workspace(loaded, biggest, others)
    alone = fit_end_odds(loaded, biggest)
    assert fit.biggest == alone and fit.target == 4 and abs(fit.length / 4 - 1) < 0.1
    assert fit.end_odds > 1.5 * alone.end_odds  # short messages: likelier ends
    assert set(fit.own_odds) == {"user:U1", "user:U2"}
    for key in fit.own_odds:
        assert fit.end_odds * fit.own_odds[key] == pytest.approx(
            alone.end_odds * alone.own_odds[key], rel=1e-2)
    assert fit.record()["biggest"] == alone.record() and "biggest senders" in fit.describe()
    assert fit_workspace(loaded, biggest, []) == alone


def test_the_slope_is_fitted_over_every_measurement_and_aimed_along_it() -> None:
    """Mean length ~ factor^-s: s by least squares over all the factors tried, so that one
    noisy mean does not turn the search round. Chitchat's biggest senders measured 48.5
    characters at x1.2, then 45.5 at x1.11: from those two alone the replies lengthen as the
    end gets likelier; over all four, s is about 0.44."""
    exact = [(x, 50 * x**-0.3) for x in (0.5, 1.0, 2.0)]
    assert slope(exact) == pytest.approx(0.3)
    assert aim(exact, 50 * 1.5**-0.3) == pytest.approx(1.5)
    chitchat = [(1.2, 48.5), (1.112, 45.5), (0.551, 65.1), (0.844, 57.4)]
    assert slope(chitchat) == pytest.approx(0.44, abs=0.01)
    assert 0.8 < aim(chitchat, 52.3) < 0.95  # on the line: between 57.4 at 0.844 and 48.5 at 1.2
    assert slope([(1.0, 50.0)]) == 1.0  # one factor: no slope yet
    assert aim([(1.0, 50.0)], 25.0) == pytest.approx(2.0)  # ... so twice the odds: half as long
    assert slope([(1.0, 50.0), (1.0, 40.0)]) == 1.0  # one factor, twice
    assert slope([(1.0, 50.0), (2.0, 60.0)]) == SLOPE[0]  # rising: noise, the flattest believed
    assert aim([(1.0, 0.0)], 10.0) == ODDS[0]  # nothing but empty replies


def test_a_persons_factor_corrects_their_length_along_the_slope() -> None:
    """Replies 20 % long where length ~ factor^-0.5: the end's odds x1.44 (x1.2, as if s were
    1, would leave them 10 % long); within OWN_RANGE."""
    assert own_factor(60, 50, 0.5) == pytest.approx(1.44)
    assert own_factor(60, 50, 1.0) == pytest.approx(1.2)
    assert own_factor(50, 60, 0.5) == pytest.approx((5 / 6) ** 2, abs=1e-3)
    assert own_factor(200, 50, 0.5) == OWN_RANGE[1] and own_factor(0, 50, 1.0) == OWN_RANGE[0]
    # A second round corrects the first's factor, from where its replies were drawn.
    assert own_factor(55, 50, 0.5, drawn_at=1.44) == pytest.approx(1.44 * 1.21, abs=1e-3)


def test_people_of_every_size_are_spread_over_them() -> None:
    assert spread(list("abcdefghij"), 4) == list("adgj")
    assert spread(["a", "b"], 20) == ["a", "b"]
    assert spread(["a"], 1) == ["a"] and spread([], 5) == []


# A person's messages: 60 different sentences (every word pair in them is new), oldest first.
SAID = [f"we {verb} the {thing} today" for verb in ("saw", "fixed", "lost", "sold", "drew", "ate")
        for thing in ("cake", "car", "map", "song", "plan", "bike", "lamp", "door", "boat", "kite")]


def test_replies_narrower_than_the_persons_messages_are_told_by_their_word_pairs() -> None:
    """Replies that say the same few things over and over hold fewer distinct word pairs than
    the person's messages; replies as varied as theirs do not, nor do replies twice as long
    (each two of their sentences): the pairs are counted as many of each, their newest. One-
    word replies have no pairs to tell by."""
    assert narrower(["we saw the cake today", "we saw the car today"] * 30, SAID)
    assert not narrower(SAID[::-1], SAID)
    assert not narrower([f"{a}. {b}" for a, b in zip(SAID[::2], SAID[1::2], strict=True)], SAID)
    assert not narrower(["ok", "sure"] * 30, SAID)
    assert not narrower(SAID, ["ok"] * 60)


def test_a_narrow_persons_boost_is_lowered_until_their_wording_is_as_varied_as_theirs() -> None:
    """Three people drawn at a boost of 3, where wording narrows as the boost grows (a plain
    stand-in for the model, by the row's boost): U1 narrows only above 2.5, U2 above 1.5, U3
    never. U1 gets one step down, U2 two (the most BOOST_ROUNDS gives, taken without a look
    after the last), U3 none; a row at boost 0 (no contrast) is never drawn for it."""
    narrows_above = {"user:U1": 2.5, "user:U2": 1.5, "user:U3": math.inf, "user:U4": -1.0}
    asked: list[list[tuple[str, float]]] = []

    def draw(rows: Sequence[Row]) -> list[list[str]]:
        asked.append([(row.own_words, row.boost) for row in rows])
        return [SAID[:2] * 30 if row.boost > narrows_above[row.own_words] else SAID
                for row in rows]

    rows = [Row(boost=3.0, own_words=f"user:U{k}") for k in (1, 2, 3)] + [
        Row(boost=0.0, own_words="user:U4")]
    boosts = lowered_boosts(rows, [SAID] * 4, draw)
    assert BOOST_ROUNDS == 2
    assert boosts == [round(3 * BOOST_STEP, 3), round(round(3 * BOOST_STEP, 3) * BOOST_STEP, 3),
                      3.0, 0.0]
    assert asked == [[("user:U1", 3.0), ("user:U2", 3.0), ("user:U3", 3.0)],
                     [("user:U1", 2.0), ("user:U2", 2.0)]]
    fit = Fit(1.0, 10.0, 10.0, ((1.0, 10.0),), {"user:U1": 1.2, "user:U2": 0.9},
              {"user:U2": boosts[1]})
    assert "1 of them drawn at a lower boost for their variety (1.333)" in fit.describe()
