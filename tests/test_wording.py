"""Each person's own words (trainer/wording.py): counted, stored, and preferred by the guard."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mimic.trainer import lexicon
from mimic.trainer.lexicon import Lexicon, WordGuard, words
from mimic.trainer.novelty import NoveltyIndex
from mimic.trainer.registry import LoadedModel
from mimic.trainer.sampler import (
    BOOST,
    DEDICATED_BOOST,
    SMALL_BOOST,
    Row,
    boost_for,
    sample_rows,
)
from mimic.trainer.vocab import Vocab
from mimic.trainer.wording import (
    MOST,
    OWN_WORDS,
    READ_WORDS,
    SMALL_OWN_WORDS,
    SMOOTHING,
    Wording,
)
from tests.test_lexicon import LINES, SMALL
from tests.test_sampler import fixed_odds, gen

SAID = [("U1", "C1", "The cat sat, the cat ran"), ("U1", "C2", "cats don't care"),
        ("U2", "C1", "the dog sat"), ("U2", "C1", "dogs and cats"), ("U3", "C1", "the end")]
COVERED = {"user:U1", "user:U2", "channel:C1"}


def built() -> Wording:
    return Wording.build(SAID, COVERED)


def test_counts_each_covered_target_and_the_workspace() -> None:
    wording = built()
    assert wording.words == sorted({w for _u, _c, text in SAID for w in words(text)})
    total = dict(zip(wording.words, wording.counts.tolist(), strict=True))
    assert total["the"] == 4 and total["cat"] == 2 and total["don't"] == 1
    assert set(wording.targets) == COVERED  # U3 and C2 are not covered: not counted
    index, uses = wording.targets["user:U1"]
    assert {wording.words[i]: n for i, n in zip(index, uses, strict=True)} == {
        "the": 2, "cat": 2, "sat": 1, "ran": 1, "cats": 1, "don't": 1, "care": 1}
    assert wording.prior("user:U3") is None and wording.prior("") is None
    assert wording.prior("user:U1") is wording.prior("user:U1")  # kept: the guard caches by it
    # How many of their messages start with a capital, of those with a letter.
    assert (wording.capitals("user:U1"), wording.capitals("user:U2"),
            wording.capitals("channel:C1"), wording.capitals("user:U3")) == (
        (1, 2), (0, 2), (1, 4), None)


def test_the_ratio_is_the_persons_use_against_the_workspaces() -> None:
    prior = built().prior("user:U1")
    assert prior is not None
    assert prior.ratio("") == pytest.approx(0.0)  # all words: the same mass for both
    # U1 wrote 9 of the workspace's 17 words; "cat" 2 of its 2 ("cat" and "cats": 3 of 4).
    share = (2 / 9) / (2 / 17)
    assert prior.ratio("cat", whole=True) == pytest.approx(
        math.log((share + SMOOTHING) / (1 + SMOOTHING)))
    assert prior.ratio("cat") == pytest.approx(
        math.log(((3 / 9) / (4 / 17) + SMOOTHING) / (1 + SMOOTHING)))
    # Bob's "dog" (1 of his 6 words, 1 of the workspace's 17) counts as used MOST times as
    # much as the workspace uses it, not 2.8 times: preferred, not repeated.
    bob = built().prior("user:U2")
    assert bob is not None and bob.ratio("dog", whole=True) == pytest.approx(
        math.log((MOST + SMOOTHING) / (1 + SMOOTHING)))
    # A word they never used is rarer by the smoothing's floor, not impossible.
    assert prior.ratio("dog", whole=True) == pytest.approx(
        math.log(SMOOTHING / (1 + SMOOTHING)))
    assert prior.ratio("zebra") is None and prior.ratio("ca", whole=True) is None


def test_save_and_load_give_the_same_counts(tmp_path: Path) -> None:
    wording = built()
    wording.save(tmp_path / "w.npz")
    again = Wording.load(tmp_path / "w.npz")
    assert again.words == wording.words and again.counts.tolist() == wording.counts.tolist()
    assert {k: (i.tolist(), u.tolist()) for k, (i, u) in again.targets.items()} == {
        k: (i.tolist(), u.tolist()) for k, (i, u) in wording.targets.items()}
    assert again.starts == wording.starts and again.capitals("user:U1") == (1, 2)
    empty = Wording.build([], set())
    empty.save(tmp_path / "e.npz")
    assert Wording.load(tmp_path / "e.npz").words == []


def test_a_damaged_file_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="w.npz"):
        Wording.load(path)
    built().save(path)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # cut short: a zip without its directory
    with pytest.raises(ValueError, match="w.npz"):
        Wording.load(path)
    path.write_bytes(whole)
    good = dict(np.load(path))
    for name, bad in [("index", good["index"] + 10_000), ("offsets", good["offsets"][:-1]),
                      ("uses", -good["uses"]), ("format", np.array([99])),
                      ("words", np.frombuffer(b"b\na", dtype=np.uint8))]:
        np.savez(path, **{**good, name: bad})
        with pytest.raises(ValueError, match="w.npz"):
            Wording.load(path)
    np.savez(path, **{k: v for k, v in good.items() if k != "uses"})
    with pytest.raises(ValueError, match="not a mimic wording file"):
        Wording.load(path)
    for bad in (good["starts"][:-1], good["starts"][:, ::-1], -good["starts"],
                good["starts"] + 0.5):
        np.savez(path, **{**good, "starts": bad})
        with pytest.raises(ValueError, match="first letters"):
            Wording.load(path)


def test_a_file_from_before_first_letters_were_counted_still_loads(tmp_path: Path) -> None:
    """Versions saved before the first letters were counted (no "starts" array) load with
    none: their rows' first letters follow the model's odds alone. (The array is one older
    mimics do not read, so they still load the files saved now.)"""
    path = tmp_path / "w.npz"
    built().save(path)
    np.savez(path, **{k: v for k, v in np.load(path).items() if k != "starts"})
    again = Wording.load(path)
    assert again.count("user:U1") == built().count("user:U1")
    assert again.capitals("user:U1") is None
    loaded = LoadedModel(1, 1, fixed_odds(VOCAB, [1 / 16] * 16), VOCAB, NoveltyIndex.build([]),
                         guard=WordGuard(Lexicon(again.words), VOCAB, again))
    assert loaded.row("user:U1").capitals == (0, 0)
    again.save(path)  # saved again, still none (not counts of nought)
    assert Wording.load(path).capitals("user:U1") is None
    loaded = LoadedModel(1, 1, loaded.model, VOCAB, loaded.novelty,
                         guard=WordGuard(Lexicon(again.words), VOCAB, built()))
    assert loaded.row("user:U1").capitals == (1, 2)


VOCAB = Vocab(list("abcdeghnorst' "))


def test_a_words_weights_add_up_to_its_ratio_over_its_letters() -> None:
    """However a word is spelled out, its letters' weights and its end's add up to the
    weight times r(word): each word is weighed once."""
    wording = built()
    guard = WordGuard(Lexicon(wording.words), VOCAB, wording, weight=0.5)
    prior = wording.prior("user:U1")
    assert prior is not None
    for word in ("cat", "cats", "dog", "don't", "the"):
        state, total = guard.start(""), 0.0
        for char in word + " ":
            bias = guard.biases([(state, "user:U1")])
            assert bias is not None
            total += float(bias[0, VOCAB.stoi[char]])
            state = guard.advance(state, VOCAB.stoi[char])
        assert total == pytest.approx(0.5 * prior.ratio(word, whole=True), abs=1e-5), word


def test_a_targets_words_weigh_more_the_more_of_them_were_counted() -> None:
    """Left to itself, the guard weighs a target's words as the boost grows: SMALL_OWN_WORDS
    for someone with a few words, OWN_WORDS from READ_WORDS[1] on, in the hot rows (worked
    out for all of a target's commonest states at once) and outside them alike."""
    high = READ_WORDS[1]
    wording = Wording.build([*SAID, ("U4", "C1", "cats dogs " * high)],
                            COVERED | {"user:U4"})
    guard = WordGuard(Lexicon(wording.words), VOCAB, wording, hot=3)
    assert SMALL_OWN_WORDS < OWN_WORDS
    for key, weight in (("user:U1", SMALL_OWN_WORDS), ("user:U4", OWN_WORDS)):
        prior = wording.prior(key)
        assert prior is not None
        for word in ("cat", "cats", "the", "dogs"):
            state, total = guard.start(""), 0.0
            for char in word + " ":
                bias = guard.biases([(state, key)])
                assert bias is not None
                total += float(bias[0, VOCAB.stoi[char]])
                state = guard.advance(state, VOCAB.stoi[char])
            assert total == pytest.approx(weight * prior.ratio(word, whole=True),
                                          abs=1e-5), (key, word)


def test_the_ratios_of_a_states_spans_are_each_spans_ratio() -> None:
    """The guard reads a state's spans in one call; a target that used none of their words
    gets None (nothing weighed) and the very row everyone without counts gets."""
    wording = built()
    inside = [wording.span("ra"), wording.span("ran"), wording.span("ran", whole=True)]
    for key in ("user:U1", "user:U2"):
        prior = wording.prior(key)
        assert prior is not None
        # "the" lies outside "ra"'s words: looked for in all of the target's.
        spans = [*inside, wording.span("the", whole=True), wording.span("zebra")]
        assert prior.ratios(wording.spans(spans)) == [
            prior.ratio("ra"), prior.ratio("ran"), prior.ratio("ran", whole=True),
            prior.ratio("the", whole=True), None]
    u2 = wording.prior("user:U2")  # only U1 wrote "ran"
    assert u2 is not None and u2.ratios(wording.spans(inside)) is None
    guard = WordGuard(Lexicon(wording.words), VOCAB, wording)
    state = guard.start("ra")
    rows = guard.biases([(state, "user:U2"), (state, "")])
    assert rows is not None and torch.equal(rows[0], rows[1])


def test_the_guard_still_forbids_and_weighs_only_counted_targets() -> None:
    wording = built()
    guard = WordGuard(Lexicon(wording.words), VOCAB, wording)
    state = guard.start("ca")
    mask = guard.allowed(state)
    assert mask is not None
    weighed = guard.biases([(state, "user:U1"), (state, "user:U3"), (state, "")])
    assert weighed is not None
    for row in weighed:
        assert torch.isinf(row[~mask]).all() and torch.isfinite(row[mask]).all()
    assert (weighed[1] == 0)[mask].all() and torch.equal(weighed[1], weighed[2])
    assert (weighed[0] != 0)[mask].any()  # U1's own words: weighed
    plain = WordGuard(Lexicon(wording.words), VOCAB)  # a version without counted words
    assert torch.equal(plain.biases([(state, "user:U1")])[0], weighed[2])
    off = WordGuard(Lexicon(wording.words), VOCAB, wording, weight=0.0)
    assert torch.equal(off.biases([(state, "user:U1")])[0], weighed[2])


def test_replies_prefer_their_persons_words() -> None:
    """The workspace wrote "aa" and "bb" equally, the person only "bb": a model that spells
    either alike writes mostly "bb" for them, half and half for anyone else."""
    vocab = Vocab(list("ab "))
    wording = Wording.build([("U1", "C1", "bb bb"), ("U2", "C1", "aa aa aa aa aa aa")],
                            {"user:U1", "user:U2"})
    guard = WordGuard(Lexicon(["aa", "bb"]), vocab, wording)
    model = fixed_odds(vocab, [0.1, 1e-9, 0.4, 0.4, 0.1])

    def share_of_b(key: str, seed: int) -> float:
        texts = sample_rows(model, vocab, [Row(temperature=1.0, own_words=key)] * 300,
                            guard=guard, generator=gen(seed))
        drawn = [w for t in texts for w in t.split()]
        assert set(drawn) <= {"aa", "bb"}  # still only real words
        return sum(w == "bb" for w in drawn) / len(drawn)

    assert share_of_b("user:U1", 0) > 0.7
    assert 0.35 < share_of_b("", 0) < 0.65
    assert share_of_b("user:U9", 0) == share_of_b("", 0)  # nobody we counted: not weighed


def test_a_targets_boost_grows_with_the_words_the_model_read_of_it() -> None:
    """Little text: SMALL_BOOST (what their vector adds is mostly noise); enough: BOOST; a
    target whose words were not counted (an older version, anyone): BOOST, as before; a
    dedicated model keeps its own."""
    low, high = READ_WORDS
    assert boost_for(None) == BOOST
    assert boost_for(0) == boost_for(low) == SMALL_BOOST and boost_for(high) == BOOST
    ramp = [boost_for(n) for n in range(low, high + 1, 500)]
    assert ramp == sorted(ramp) and SMALL_BOOST < boost_for((low * high) ** 0.5) < BOOST
    assert boost_for(100 * high) == BOOST

    wording = Wording.build([*SAID, ("U4", "C1", "cats " * high)], COVERED | {"user:U4"})
    guard = WordGuard(Lexicon(wording.words), VOCAB, wording)
    model = fixed_odds(VOCAB, [1 / len(VOCAB)] * len(VOCAB))
    loaded = LoadedModel(1, 1, model, VOCAB, NoveltyIndex.build([]), guard=guard)
    assert loaded.row("user:U1").boost == SMALL_BOOST  # a few words
    assert loaded.row("user:U4").boost == BOOST
    assert loaded.row("user:U3").boost == BOOST  # not counted
    unguarded = LoadedModel(1, 1, model, VOCAB, NoveltyIndex.build([]))
    assert unguarded.row("user:U1").boost == BOOST
    dedicated = LoadedModel(1, 1, model, VOCAB, NoveltyIndex.build([]), model, guard=guard)
    assert dedicated.row("user:U1").boost == DEDICATED_BOOST


def test_the_commonest_states_weigh_as_one_state_at_a_time(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The hot states' rows, worked out for a target all at once (a block), are the rows the
    guard works out one state at a time: at every prefix of every word, for every target,
    with more targets in one call than blocks are kept ("don" and "isn" may go on with an
    apostrophe but are no words: their apostrophe keeps its letter's weight)."""
    monkeypatch.setattr(lexicon, "BLOCKS", 3)
    lines = [*LINES, *["isn't it", "don't know"] * 8]
    said = [(f"U{i % 4}", f"C{i % 2}", line) for i, line in enumerate(lines)]
    covered = {"user:U0", "user:U1", "user:U2", "user:U3", "channel:C0"}
    wording = Wording.build(said, covered)
    hot = WordGuard(Lexicon(wording.words), SMALL, wording, hot=60)
    one_at_a_time = WordGuard(Lexicon(wording.words), SMALL, wording, hot=0)
    keys = [*sorted(covered), "", "user:U9"]
    prefixes = {w[:k] for w in wording.words for k in range(1, len(w) + 1)}
    states = [hot.start(text) for text in ["", "x ", "isn't it", *sorted(prefixes)]]
    for state in states:
        rows = [(state, key) for key in keys]
        mine, theirs = hot.biases(rows), one_at_a_time.biases(rows)
        assert (mine is None) == (theirs is None)
        if mine is not None:
            assert torch.equal(mine, theirs), state
    # The blocks were drawn on: two, grown to three, then reused (past BLOCKS).
    assert len(hot._blocks) == 3 and len(hot._hot.rows) == 1 + 3 * len(hot._hot.index)
    assert hot.start("don") in hot._hot.index and hot.start("isn") in hot._hot.index
