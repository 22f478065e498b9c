"""Each person's (and channel's) own words: how much more often they use a word than the
workspace does, for the sampler to prefer them; and how many of their messages start with a
capital, for a reply's first letter to follow their habit (trainer/sampler.py, CASE_PRIOR).

A person's vector and habits tell the shared model little about someone with a few thousand
characters: their replies drew on the workspace's words, and an author classifier told 20 such
people apart in 0.52 of cases (bench/drawing.py --chars 1000-20000). Here each reply also
weighs every word by its author's use of it against the workspace's, the unigram rescaling of
language-model adaptation (Kneser, Peters & Klakow 1997: p(w | h) x (p_person(w) / p(w))^λ),
spread over a word's letters through the trie: the weight of the letter that takes prefix x to
x' is λ (r(x') - r(x)), with r(x) the log-ratio of the mass of the person's words starting with
x to the workspace's. Over a whole word these telescope to λ r(word), so each word is weighed
once, however it is spelled out. The person's use is smoothed with the workspace's
(SMOOTHING), so a word they never wrote is made rarer, not impossible, and capped (MOST), so
their favourite words are preferred, not repeated.

Counted in the training messages only (what the model learns from; each target's newest 10 %,
held out to score it, stay unseen), per covered person and public channel, stored with the
shared model's version (WORDING) and read by the word guard (trainer/lexicon.py), which adds
the weights to the logits with its mask.
"""

from __future__ import annotations

import math
import zipfile
from array import array
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from mimic.trainer.lexicon import words
from mimic.trainer.reading import first_letter_capital

# λ, the weight of a person's words against the workspace's, on the model's log-probabilities
# before the contrast with "anyone" (a boosted row weighs them 1 + BOOST times). With MOST, 0.5
# took the style fidelity of the chitchat top 10, drawn from the shared model alone, from 0.85
# to 0.955, and of 20 people with 1,000-20,000 characters from 0.52 to 0.99, at distinct-2
# 0.97 x and 0.92 x what it was; 0.75 narrowed the small people's wording past 0.9 x the
# people's own (bench/drawing.py, BENCHMARKS.md). So λ grows with the words counted of the
# target, as the boost does (`by_words`): SMALL_OWN_WORDS up to READ_WORDS[0], OWN_WORDS from
# READ_WORDS[1]. On the 2 x 320 model, chitchat's top 10 at 0.5 and temperature 1.2 had
# fidelity 0.933 and distinct-2 0.79 (the people's: 0.86); 0.75 at 1.3: 0.960 and 0.79 (3 seeds,
# BENCHMARKS.md, twenty-first session).
OWN_WORDS, SMALL_OWN_WORDS = 0.75, 0.5
# A target's words counted (chitchat's people: median 567, its top 10 20k-200k) from which
# their habits are pushed less (SMALL_...) or fully: their vector, habits and word counts are
# learned from so little below that it is mostly noise.
READ_WORDS = (1_000, 10_000)
# The share of the workspace's use mixed into the person's: a word they never used is
# log(SMOOTHING / (1 + SMOOTHING)) = -2.4 nats (x λ) less likely than the model says.
SMOOTHING = 0.1
# A word the person uses far more than the workspace does counts as used at most MOST times as
# much: uncapped, a small person's few topic words (x100 the workspace's use) filled their
# replies ("Hope, space space, there's protecting, so pop space"), and fewer of the replies'
# word pairs were ones the workspace uses (0.62 against 0.69 capped; the people's own: 0.81).
MOST = 2.0
SPANS = 50_000  # prefixes whose place in the word list is kept (~150 B each)
# Format version, the first entry of the file's "format" array. The first letters ("starts")
# came later, as an array of their own that older mimics do not read: files without it load
# with no counts.
_MAGIC = 1


def by_words(words: int, small: float, big: float) -> float:
    """`small` for a target with up to READ_WORDS[0] words counted, `big` from READ_WORDS[1],
    log-linear between."""
    low, high = READ_WORDS
    share = min(1.0, max(0.0, math.log(max(words, 1) / low) / math.log(high / low)))
    return small + (big - small) * share


class Wording:
    """Word counts: the workspace's (over `words`, sorted) and each target's ("user:U1",
    "channel:C1") as indices into `words` with their counts; and each target's `starts`:
    (messages whose first letter is a capital, messages with a letter)."""

    def __init__(self, words: list[str], counts: np.ndarray,
                 targets: dict[str, tuple[np.ndarray, np.ndarray]],
                 starts: dict[str, tuple[int, int]] | None = None) -> None:
        self.words, self.counts, self.targets = words, counts, targets
        self.starts = starts or {}
        self._cumulative = _running_total(counts)
        self._priors: dict[str, Prior] = {}
        self._spans: dict[tuple[str, bool], tuple[int, int]] = {}

    @classmethod
    def build(cls, said: Iterable[tuple[str, str, str]], covered: set[str]) -> Wording:
        """From (user id, channel id, text) messages: the workspace's counts and those of the
        covered targets ("user:U1", "channel:C1") among their authors and channels."""
        texts: dict[str, list[str]] = defaultdict(list)
        every: list[str] = []
        for user, channel, text in said:
            every.append(text)
            for key in (f"user:{user}", f"channel:{channel}"):
                if key in covered:
                    texts[key].append(text)
        # One regex pass per target over its joined messages ("\n" is no word character).
        total = Counter(words("\n".join(every)))
        vocabulary = sorted(total)
        where = {w: i for i, w in enumerate(vocabulary)}
        targets, starts = {}, {}
        for key, said_by in sorted(texts.items()):
            used = Counter(words("\n".join(said_by)))
            index = np.array(sorted(where[w] for w in used), dtype=np.int32)
            targets[key] = index, np.array([used[vocabulary[i]] for i in index], dtype=np.int64)
            cases = [c for text in said_by if (c := first_letter_capital(text)) is not None]
            starts[key] = sum(cases), len(cases)
        return cls(vocabulary, np.array([total[w] for w in vocabulary], dtype=np.int64),
                   targets, starts)

    def save(self, path: Path) -> None:
        keys = list(self.targets)
        index = [self.targets[k][0] for k in keys]
        np.savez(path, format=np.array([_MAGIC]), words=_blob(self.words), counts=self.counts,
                 targets=_blob(keys),
                 offsets=np.cumsum([0, *map(len, index)], dtype=np.int64),
                 index=np.concatenate(index or [np.empty(0, np.int32)]).astype(np.int32),
                 uses=np.concatenate([self.targets[k][1] for k in keys]
                                     or [np.empty(0, np.int32)]).astype(np.int32),
                 **({"starts": np.array([self.starts[k] for k in keys],
                                        dtype=np.int64).reshape(-1, 2)}
                    if self.starts.keys() == self.targets.keys() else {}))

    @classmethod
    def load(cls, path: Path) -> Wording:
        """What save() wrote; ValueError (naming the file) for anything else."""
        try:
            with np.load(path, allow_pickle=False) as found:
                arrays = {k: found[k] for k in ("format", "words", "counts", "targets",
                                                "offsets", "index", "uses")}
                if "starts" in found.files:
                    arrays["starts"] = found["starts"]
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise ValueError(f"{path} is not a mimic wording file ({exc})") from None
        if arrays["format"].tolist() != [_MAGIC]:
            raise ValueError(f"{path}: unknown wording format {arrays['format'].tolist()}")
        try:
            vocabulary, keys = _unblob(arrays["words"]), _unblob(arrays["targets"])
        except UnicodeDecodeError:
            raise ValueError(f"{path}: its words are not UTF-8") from None
        counts, offsets = arrays["counts"], arrays["offsets"]
        index, uses = arrays["index"], arrays["uses"]
        starts = arrays.get("starts", np.zeros((len(keys), 2), np.int64))
        problem = (
            "the words are not sorted and distinct"
            if any(a >= b for a, b in zip(vocabulary, vocabulary[1:], strict=False)) else
            "the counts do not match the words"
            if counts.shape != (len(vocabulary),) or (len(counts) and counts.min() < 1) else
            "the targets' offsets do not match"
            if offsets.shape != (len(keys) + 1,) or (offsets[0] != 0 if len(offsets) else True)
            or offsets[-1] != len(index) or np.any(np.diff(offsets) < 0) else
            "the targets' words are out of range or unsorted"
            if index.shape != uses.shape or (len(index) and (index.min() < 0
                                                             or index.max() >= len(vocabulary)))
            or any(np.any(np.diff(index[a:b]) <= 0) for a, b in zip(offsets, offsets[1:],
                                                                    strict=False))
            or (len(uses) and uses.min() < 1) else
            "the targets' first letters do not add up"
            if starts.shape != (len(keys), 2) or starts.dtype.kind not in "iu" or (len(starts)
                and (starts.min() < 0 or np.any(starts[:, 0] > starts[:, 1]))) else "")
        if problem:
            raise ValueError(f"{path}: {problem}")
        targets = {key: (index[a:b], uses[a:b])
                   for key, a, b in zip(keys, offsets[:-1].tolist(), offsets[1:].tolist(),
                                        strict=True)}
        firsts = ({key: (int(k), int(n)) for key, (k, n) in zip(keys, starts.tolist(),
                                                                strict=True)}
                  if "starts" in arrays else {})
        return cls(vocabulary, counts.astype(np.int64), targets, firsts)

    def span(self, prefix: str, whole: bool = False) -> tuple[int, int]:
        """Where the words starting with `prefix` (with `whole`: the word itself) are in
        `words`, as (start, stop); the same for every target, so kept (bounded)."""
        found = self._spans.get((prefix, whole))
        if found is None:
            start = bisect_left(self.words, prefix)
            if whole:
                stop = start + (start < len(self.words) and self.words[start] == prefix)
            else:
                stop = bisect_left(self.words, prefix + "\U0010ffff", start)
            if len(self._spans) >= SPANS:
                self._spans.clear()
            found = self._spans[prefix, whole] = start, stop
        return found

    def spans(self, spans: Sequence[tuple[int, int]]) -> Spans:
        """`spans` (from `span`) with the workspace's count of each, for `Prior.ratios`."""
        return Spans(self, spans)

    def count(self, key: str) -> int | None:
        """How many words of `key`'s were counted (None: the target's were not)."""
        found = self.targets.get(key)
        return None if found is None else int(found[1].sum())

    def capitals(self, key: str) -> tuple[int, int] | None:
        """(`key`'s messages whose first letter is a capital, those with a letter), or None
        when the target's were not counted."""
        return self.starts.get(key)

    def prior(self, key: str) -> Prior | None:
        """`key`'s prior (kept: the guard caches its weights by target), or None when the
        target's words were not counted (not covered, or nobody: anyone)."""
        found = self._priors.get(key)
        if found is None and key in self.targets:
            found = self._priors[key] = Prior(self, *self.targets[key])
        return found


class Spans:
    """Runs of the word list (`Wording.span`s) with the workspace's use of each: what
    `Prior.ratios` reads, built once per state of the word guard for all targets."""

    def __init__(self, wording: Wording, spans: Sequence[tuple[int, int]]) -> None:
        self.bounds = np.array(spans, np.int32).reshape(-1, 2)  # as Prior's index: no copies
        everyone = wording._cumulative
        self.theirs = [everyone[stop] - everyone[start] for start, stop in spans]

    @cached_property
    def workspace(self) -> np.ndarray:
        """`theirs` as an array (for `Prior.uses`)."""
        return np.array(self.theirs, np.float64)

    def __len__(self) -> int:
        return len(self.theirs)


class Prior:
    """r(x), the smoothed log-ratio of one target's use of the words starting with x (or of
    the word x itself) to the workspace's (see the module docstring)."""

    def __init__(self, wording: Wording, index: np.ndarray, uses: np.ndarray) -> None:
        self._wording = wording
        self._index = index.astype(np.int32, copy=False)
        self._cumulative = _running_total(uses)
        # share = (mine / my total) / (theirs / their total) = mine * _scale / theirs
        self._scale = wording._cumulative[-1] / max(1, self._cumulative[-1])

    def ratio(self, prefix: str, *, whole: bool = False) -> float | None:
        """r of the words starting with `prefix` (with `whole`: of the word itself); None
        when the workspace never used such a word (nothing to weigh it by)."""
        spans = self._wording.spans([self._wording.span(prefix, whole)])
        ratios = self.ratios(spans)
        return ratios[0] if ratios is not None else _NONE if spans.theirs[0] else None

    def uses(self, spans: Spans) -> tuple[np.ndarray, np.ndarray]:
        """`ratios` for many spans at once, as arrays: the target's use of each span, and its
        r (NaN where the workspace never used the span, _NONE where the target did not)."""
        mine = np.frombuffer(self._cumulative, np.int64)
        at = np.searchsorted(self._index, spans.bounds)
        used = mine[at[:, 1]] - mine[at[:, 0]]
        theirs = spans.workspace
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.log((np.minimum(used * self._scale / theirs, MOST) + SMOOTHING)
                       / (1 + SMOOTHING))
        return used, np.where(theirs == 0, np.nan, np.where(used == 0, _NONE, r))

    def ratios(self, spans: Spans) -> list[float | None] | None:
        """r of the words in each of `spans`, None for a span the workspace never used;
        None for all when the target used none of their words: each r is then the same
        (_NONE) and no word is weighed above another. One search for all of a state's ~15
        spans: two bisects each cost the guard ~0.2 ms for every state new to a target
        (BENCHMARKS.md, eleventh session)."""
        mine = self._cumulative
        at = np.searchsorted(self._index, spans.bounds).tolist()
        used = [mine[j] - mine[i] for i, j in at]
        if not any(used):
            return None
        scale = self._scale
        return [None if not theirs else _NONE if not m else
                math.log((min(m * scale / theirs, MOST) + SMOOTHING) / (1 + SMOOTHING))
                for m, theirs in zip(used, spans.theirs, strict=True)]


_NONE = math.log(SMOOTHING / (1 + SMOOTHING))  # r of words the target never used


def _running_total(counts: np.ndarray) -> array[int]:
    """0, then the running sums of `counts`: the count of any run of words is a difference."""
    return array("q", np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
                 .astype(np.int64).tobytes())


def _blob(texts: list[str]) -> np.ndarray:
    """Strings (none holding a line break) as one UTF-8 byte array: loads without pickle."""
    return np.frombuffer("\n".join(texts).encode(), dtype=np.uint8)


def _unblob(blob: np.ndarray) -> list[str]:
    text = blob.astype(np.uint8).tobytes().decode()
    return text.split("\n") if text else []
