"""What a reader sees, as numbers (trainer/reading.py)."""

from __future__ import annotations

import pytest

from mimic.trainer.reading import (
    Vocabulary,
    first_letter_capital,
    long_length,
    pairs,
    read,
    stutters,
)


def test_reading_counts_what_a_reader_notices() -> None:
    vocabulary = Vocabulary.of(["the cat sat on the mat", "a dog ate my hat"])
    reading = read(["The cat sat.", "jy cat dog", "!!", "the cat sat"], vocabulary)
    assert reading.first_word_real == pytest.approx(2 / 3)  # "!!" has no word to judge
    assert reading.capitalised == pytest.approx(1 / 3)
    assert reading.real_words == pytest.approx(8 / 9)  # all but "jy"
    assert reading.real_pairs == pytest.approx(4 / 6)  # not "jy cat", not "cat dog"
    assert reading.distinct_2 == pytest.approx(4 / 6)  # "the cat", "cat sat" twice
    assert reading.length == pytest.approx((12 + 10 + 2 + 11) / 4)
    assert reading.long is None  # no threshold given
    assert read(["The cat sat.", "jy cat dog", "!!", "the cat sat"], vocabulary,
                long=10).long == pytest.approx(2 / 4)  # 12 and 11 characters
    assert long_length(["x" * n for n in range(1, 201)]) == 198  # 99 % stay within
    assert reading.stutters == 0
    # A word following itself, whatever the case and the punctuation between ("no, no"), in
    # one message of four; not across messages, nor a word inside a longer one.
    assert read(["just Just do it", "no, no", "the theme", "it. it"], vocabulary
                ).stutters == pytest.approx(3 / 4)
    assert not stutters("ha haha") and not stutters("") and stutters("a a a")
    assert read(["see you", "you too"], vocabulary).stutters == 0
    # Variety at equal numbers: the first three messages repeat no pair.
    assert read(["The cat sat.", "jy cat dog", "!!", "the cat sat"], vocabulary,
                variety=3).distinct_2 == pytest.approx(1.0)


def test_edges() -> None:
    empty = read([], Vocabulary.of([]))
    assert all(getattr(empty, f) is None for f in empty.FIELDS)
    assert first_letter_capital("123 Go") is True and first_letter_capital("...") is None
    assert pairs("don't stop") == ["don't stop"]
