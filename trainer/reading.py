"""What a reader sees in a set of messages, as numbers: `mimic eval` and `bench/drawing.py` put
each beside the same figure for the people's real held-out messages.

- first word real: the message starts with a word the workspace uses (not "jy it see");
- capitalised: the message's first letter is a capital (people differ, and stick to it);
- real words / real word pairs: words, and pairs of consecutive words, the workspace uses;
- distinct-2: distinct word pairs over all word pairs, a measure of variety (compared at equal
  numbers of messages: `read(..., variety=n)`);
- length: characters a message;
- long: the share of messages longer than 99 % of the workspace's (`long_length`): replies
  that run on where people stop;
- stutters: the share of messages where a word follows itself ("just just", "a a a").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mimic.trainer.lexicon import words


def _share(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def pairs(text: str) -> list[str]:
    """Consecutive word pairs, "a b"."""
    found = words(text)
    return [f"{a} {b}" for a, b in zip(found, found[1:], strict=False)]


@dataclass(frozen=True)
class Vocabulary:
    """The words and word pairs a workspace uses."""

    words: frozenset[str]
    pairs: frozenset[str]

    @classmethod
    def of(cls, texts: Iterable[str]) -> Vocabulary:
        seen_words: set[str] = set()
        seen_pairs: set[str] = set()
        for text in texts:
            found = words(text)
            seen_words.update(found)
            seen_pairs.update(f"{a} {b}" for a, b in zip(found, found[1:], strict=False))
        return cls(frozenset(seen_words), frozenset(seen_pairs))

    def __or__(self, other: Vocabulary) -> Vocabulary:
        return Vocabulary(self.words | other.words, self.pairs | other.pairs)


@dataclass(frozen=True)
class Reading:
    first_word_real: float | None
    capitalised: float | None
    real_words: float | None
    real_pairs: float | None
    distinct_2: float | None
    length: float | None
    long: float | None = None
    stutters: float | None = None

    FIELDS = ("first_word_real", "capitalised", "real_words", "real_pairs", "distinct_2",
              "length", "long", "stutters")


LONG = 0.99  # "long": longer than this share of the workspace's messages


def long_length(texts: Iterable[str], share: float = LONG) -> int:
    """The length `share` of `texts` stay within (0 for none)."""
    lengths = sorted(len(text) for text in texts)
    return lengths[int(share * (len(lengths) - 1))] if lengths else 0


def first_letter_capital(text: str) -> bool | None:
    """Whether the first letter is a capital; None if the message has no letter."""
    letter = next((ch for ch in text if ch.isalpha()), None)
    return None if letter is None else letter.isupper()


def stutters(text: str) -> bool:
    """Whether a word follows itself ("just just")."""
    found = words(text)
    return any(a == b for a, b in zip(found, found[1:], strict=False))


def read(texts: Sequence[str], vocabulary: Vocabulary, variety: int | None = None,
         long: int | None = None) -> Reading:
    """What a reader sees in `texts`; distinct-2 over the first `variety` of them (all by
    default): pass the same number for the texts compared, as the share falls with more. With
    `long` (`long_length` of the workspace's messages), the share longer than that."""
    firsts = [found[0] in vocabulary.words for t in texts if (found := words(t))]
    capitals = [c for t in texts if (c := first_letter_capital(t)) is not None]
    every_word = [w for t in texts for w in words(t)]
    every_pair = [p for t in texts[:variety] for p in pairs(t)]
    return Reading(
        first_word_real=_share(firsts),
        capitalised=_share(capitals),
        real_words=_share([w in vocabulary.words for w in every_word]),
        real_pairs=_share([p in vocabulary.pairs for p in every_pair]),
        distinct_2=len(set(every_pair)) / len(every_pair) if every_pair else None,
        length=sum(map(len, texts)) / len(texts) if texts else None,
        long=_share([len(t) > long for t in texts]) if long is not None else None,
        stutters=_share([stutters(t) for t in texts]))
