"""No invented words, by construction: the workspace's word list, and a guard for the sampler.

A char-LSTM spells words one character at a time, so now and then it writes a word nobody in
the workspace ever used ("swond"). `WordGuard` tells the sampler, before each character is drawn,
which characters keep the current word on the way to a real one (a `Lexicon` word), and lets a
word end only where a real word ends: no draft is wasted, and no filter runs afterwards.
Numbers, URLs, @mentions, #channels and :emoji_codes: are not words to check and pass freely
(the rules are on `WordGuard`).

Words are what `words()` finds (lowercased `\\w+(?:'\\w+)*`, numbers, URLs, mentions and emoji
codes left out), the one definition `mimic eval` uses too (trainer/reading.py): built from the
same messages, the lexicon holds every word the evaluation calls real, and the guard lets
through no other.
"""

from __future__ import annotations

import heapq
import math
import os
import re
from bisect import bisect_left
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from mimic.trainer.vocab import Vocab

if TYPE_CHECKING:
    from mimic.trainer.wording import Spans, Wording

_WORD = re.compile(r"\w+(?:'\w+)*")
_WORD_CHARS = re.compile(r"\w+")
# The tokens WordGuard leaves unchecked (its rules): a URL up to whitespace, a name after a
# sigil that does not follow a word character, and a run of closed emoji codes.
_EXEMPT = re.compile(r"(?<!\w)(?i:https?:|www\.)\S*|(?<!\w)[@#]\w+(?:'\w+)*"
                     r"|(?<!\S)(?::+[a-z0-9_+\-]+:)+")
_MAGIC = "mimic-lexicon 1"  # first line of a saved lexicon; the sorted words follow, one a line


def words(text: str) -> list[str]:
    """Lowercased words ("don't", "mp3"): what the lexicon holds and `mimic eval` counts.
    What the guard lets pass freely is not a word: numbers ("3rd"), URLs, @mentions,
    #channels and closed :emoji_codes:."""
    return [w for w in _WORD.findall(_EXEMPT.sub(" ", text).lower()) if not w[0].isdigit()]


class Lexicon:
    """The words a workspace has used. Kept as one sorted list: a prefix's words are a
    contiguous run found by bisection, which serves as a trie without a node per character
    (a million small dicts for 200k words) and loads as fast as the file reads."""

    def __init__(self, words: Iterable[str] = ()) -> None:
        self._words: list[str] = sorted(set(words))
        self._set = frozenset(self._words)
        if "" in self._set or any("\n" in w for w in self._words):  # the file's separator
            raise ValueError("lexicon words must be non-empty and hold no line break")

    @classmethod
    def _sorted(cls, words: list[str]) -> Lexicon:
        """From words already sorted and distinct (no re-sorting: the load path)."""
        lexicon = cls.__new__(cls)
        lexicon._words, lexicon._set = words, frozenset(words)
        return lexicon

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1) -> Lexicon:
        """Every word used at least `min_count` times in `texts`."""
        # One regex pass over all the text: a newline is no word character, so joining the
        # messages cannot merge words (or split them: lower() treats it like the text's end).
        counts = Counter(words("\n".join(texts)))
        return cls(w for w, n in counts.items() if n >= min_count)

    def __contains__(self, word: object) -> bool:
        return word in self._set

    def __len__(self) -> int:
        return len(self._words)

    def __iter__(self) -> Iterator[str]:
        return iter(self._words)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lexicon) and self._words == other._words

    def is_prefix(self, prefix: str) -> bool:
        """Whether some word starts with `prefix` (a word is a prefix of itself)."""
        i = bisect_left(self._words, prefix)
        return i < len(self._words) and self._words[i].startswith(prefix)

    def continuations(self, prefix: str) -> set[str]:
        """The characters that follow `prefix` in some word: one bisection per character
        found, jumping over all the words that share it."""
        found: set[str] = set()
        words, n, k = self._words, len(self._words), len(prefix)
        i = bisect_left(words, prefix)
        while i < n and words[i].startswith(prefix):
            if len(words[i]) == k:  # the prefix itself is a word
                i += 1
                continue
            char = words[i][k]
            found.add(char)
            if ord(char) == 0x10FFFF:  # nothing sorts after it
                break
            i = bisect_left(words, prefix + chr(ord(char) + 1), i)
        return found

    def spellable(self, alphabet: set[str]) -> Lexicon:
        """The words made only of `alphabet`'s characters (those a model can write)."""
        if not alphabet:
            return Lexicon._sorted([])
        outside = re.compile("[^" + "".join(re.escape(c) for c in sorted(alphabet)) + "]")
        kept = [w for w in self._words if not outside.search(w)]
        return self if len(kept) == len(self._words) else Lexicon._sorted(kept)

    def save(self, path: str | os.PathLike[str]) -> None:
        """UTF-8 text: a header line, then the sorted words one a line (no word holds a line
        break). Written to a temporary file and renamed, so a reader never sees half of it."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("\n".join([_MAGIC, *self._words]), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Lexicon:
        header, _, body = Path(path).read_text(encoding="utf-8").partition("\n")
        if header != _MAGIC:
            raise ValueError(f"{path} is not a mimic lexicon (header {header[:40]!r})")
        found = body.split("\n") if body else []
        # Bisection needs strict order; checking it is linear, sorting again would not be.
        if "" in found or any(a >= b for a, b in zip(found, found[1:], strict=False)):
            raise ValueError(f"{path}: the words are not sorted, distinct and non-empty")
        return cls._sorted(found)


# What a character does to the current token.
_SPACE, _LETTER, _DIGIT, _APOS, _SIGIL, _OTHER = range(6)  # _LETTER: any non-digit word char
# Where a message stands. Outside a word: at a token's start (message start or after
# whitespace), after punctuation, right after an emoji code's closing colon.
_START, _PUNCT, _CLOSED, _WORD_MODE, _FREE, _FREE_APOS, _SIGIL_MODE, _URL, _CODE, _BROKEN = \
    range(10)
_OUTSIDE = (_START, _PUNCT, _CLOSED)

State = tuple[Any, ...]


class Last(NamedTuple):
    """The last word a row wrote, and the odds (as drawn) of spelling the rest of it from
    each of its letters on: tails[k], having written its first k + 1 letters, of the next
    ones and then its end. None where its letters' odds are not known one for one (a seed's
    word, one a drawn apostrophe closed, a letter whose lowercase is two)."""

    word: str
    tails: tuple[float, ...] | None = None


# A letter on the way to spelling the last word again is weighed by at least 1 - this (log:
# -6.9, before the boost and temperature sharpen it), not nothing: the odds the word was
# written at are a guess at the odds now.
MOST_REPEATED = 0.999

# What a state's word weights need (WordGuard._steps): word-list spans, and the ids weighed.
_Steps = tuple["Spans", list[list[int]]]
START: State = (_START,)
PUNCT: State = (_PUNCT,)
CLOSED: State = (_CLOSED,)
FREE: State = (_FREE,)
FREE_APOS: State = (_FREE_APOS,)
SIGIL: State = (_SIGIL_MODE,)
URL: State = (_URL,)
CODE_OPEN: State = (_CODE, False, PUNCT)
BROKEN: State = (_BROKEN,)  # an emoji code's plain reading once it broke the rules: allows nothing

# URL schemes are typed letter by letter, and a workspace's lexicon may lack "http" (or have
# it only as a whole word): these letters may always begin a word, and the character after the
# scheme opens the URL.
_SCHEMES = ("http:", "https:", "www.")


def _scheme_next(schemes: Sequence[str]) -> dict[str, set[str]]:
    """"" -> {"h", "w"}, "htt" -> {"p"}, "http" -> {"s"}: how a scheme's name goes on."""
    return {s[:k]: {t[k] for t in schemes if t.startswith(s[:k]) and k < len(t) - 1}
            for s in schemes for k in range(len(s) - 1)}


_URL_OPENER = {s[:-1]: s[-1] for s in _SCHEMES}  # "http" -> ":", "www" -> "."
_CODE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_+-")
_CACHE_LIMIT = 100_000  # masks kept; cleared past this (seed texts can bring endless words)
# (target, state) rows of what `biases` adds kept in the guard's pool, a float per vocabulary
# id each (11 MB for chitchat's 93): people x the states their replies reach (a 60-character
# reply reaches ~25 new ones in a person's first few replies).
_BIASES = 30_000
# The word beginnings the workspace writes most ("t", "th", "the", "i"...; by its use of the
# words they begin): what `biases` adds inside them is worked out for a target all at once,
# the first time the target is drawn (a block of rows, ~1.5 ms: about what that first reply's
# new rows cost), not one state at a time as replies reach them (~0.1 ms each; a person's
# later replies still reach ~35 new states each: 15 % of the sampler's time, bench/sampling.py).
# Chitchat's top 1,000 held 85 % of the states its replies reached first. Blocks are kept for
# the BLOCKS targets drawn last (372 kB each for chitchat, 48 MB at most; with 32, the latency
# bench's 100 people, asked in turn, had theirs worked out again at every request).
HOT_STATES = 1_000
BLOCKS = 128


@dataclass
class _Hot:
    """The hot word states and what is the same for every target there: each state's spans
    one after another, its own first (`starts`: where each state's begin; `parents`: each
    span's state's own span), which span weighs each id (`child`, -1: none) and the floors;
    `rows` holds the targets' blocks (row 0: zeros)."""

    index: dict[State, int]
    spans: Spans
    starts: np.ndarray
    parents: np.ndarray
    child: np.ndarray
    floors: np.ndarray
    rows: torch.Tensor


def _classify(char: str) -> tuple[int, str, str]:
    """(kind, lowercase form, the character): what the character does to a token."""
    low = char.lower()
    if char == "'":
        return _APOS, low, char
    if char.isspace():
        return _SPACE, low, char
    if _WORD_CHARS.fullmatch(low):
        return (_DIGIT if char.isdigit() else _LETTER), low, char
    if char in "@#":
        return _SIGIL, low, char
    return _OTHER, low, char


class WordGuard:
    """Which characters may come next so that every word written is a lexicon word.

    Per message a state, an immutable tuple: `start(seed_text)`, then `advance(state, id)`
    after each drawn character; `allowed(state)` is the bool mask over the vocabulary, or None
    when anything goes. The rules:

    - Inside a word that began with a letter (any word character but a digit, so "_italic_"
      too): characters that keep the lowercased word a prefix of a lexicon word, in either
      case; an apostrophe only where a lexicon word continues with one; and any character
      that ends a word (space, punctuation, emoji, EOM...) only if the word is complete.
      A complete word may be followed by an apostrophe as a closing quote ("the students'"):
      like the regex, the word is then what came before it, and only enders may follow.
      The typographic apostrophe (U+2019) is punctuation, as it is to the regex.
      The words considered are those the vocabulary can spell (others could trap a word).
    - Outside a word: anything, but a letter may only begin a word some lexicon word begins
      with (or a URL scheme: h, w).
    - Free until the word ends: numbers (a word starting with a digit, "3rd", "90's"), and
      @mentions / #channels (from a sigil not straight after a word character: "@bob",
      "(#general)", but "bob@example" is two words).
    - URLs: "http", "https" and "www" may always be spelled at a word's start; the ":" (or
      ".") after them opens a URL, free until whitespace. "httpx" is checked as a word.
      (A token must start with "http:", "https:" or "www.", not merely "http".)
    - Emoji codes: a ":" at a token's start or right after a closing ":" opens a code; the
      characters [a-z0-9_+-] are free and the next ":" closes it. Any other character means
      it was not a code after all: it must be allowed by the plain rules run alongside (so
      ":p " needs "p" in the lexicon, ":swondy " cannot happen).
    - A word nothing can continue and that may not end (only a seed text's unknown word,
      "I said swo"): it may end at once (the user's word, not an invention).
    - Should a state ever allow nothing (a vocabulary without the needed characters), it is
      unconstrained (None), never an all-False mask.

    With a `wording`, `biases` also weighs each character by how much its row's target uses
    the words it leads to against the workspace (trainer/wording.py), `weight` times (None:
    by how many of the target's words were counted, SMALL_OWN_WORDS to OWN_WORDS); inside
    the `hot` commonest word beginnings, for all of them at once the first time the target is
    drawn (HOT_STATES), elsewhere state by state as replies reach them.

    `biases` returns a new tensor each call; the rows it is built from are the guard's.
    """

    def __init__(self, lexicon: Lexicon, vocab: Vocab, wording: Wording | None = None,
                 weight: float | None = None, hot: int = HOT_STATES) -> None:
        self.vocab, self.wording = vocab, wording
        self.weight = weight
        self._weights: dict[str, float] = {}  # target key -> its weight
        self._weighing = wording is not None and weight != 0
        self.hot = hot  # how many of the commonest word states are worked out in blocks
        self._n = len(vocab)
        # Id 0 (EOM) ends the message like whitespace; UNK decodes to U+FFFD, punctuation.
        self._chars = [(_SPACE, "\n", "\n"), _classify("\ufffd"),
                       *(_classify(c) for c in vocab.chars)]
        self._by_low: dict[str, list[int]] = {}  # one-character lowercase form -> ids
        self._multi: list[tuple[int, str]] = []  # ids whose lowercase is longer ("İ")
        alphabet = {"'"}
        for i, (kind, low, _) in enumerate(self._chars):
            if kind in (_LETTER, _DIGIT, _APOS):
                alphabet.update(low)
                if len(low) == 1:
                    self._by_low.setdefault(low, []).append(i)
                else:
                    self._multi.append((i, low))
        self.lexicon = lexicon.spellable(alphabet)
        # Only schemes whose URL the vocabulary can open ("https" then ":"): else a scheme's
        # name would be a word that may not end.
        raws = {c[2] for c in self._chars}
        self._schemes = _scheme_next([s for s in _SCHEMES
                                      if all(c in raws or c.upper() in raws for c in s)])
        # Masks are worked out as sets of ids (cheap unions, ~20 us for a new state) and turned
        # into one row of 0 / -inf each (`_floor`), shared by every state with the same set.
        self._letters = frozenset(i for i, c in enumerate(self._chars) if c[0] == _LETTER)
        self._enders = frozenset(i for i, c in enumerate(self._chars)
                                 if c[0] not in (_LETTER, _DIGIT))
        self._code = frozenset(i for i, c in enumerate(self._chars)
                               if c[2] in _CODE_CHARS or c[2] == ":")
        self._everything = frozenset(range(self._n))
        self._strict_cache: dict[State, frozenset[int]] = {}
        # What `biases` adds, one row per (target key, state) in a pool that one call indexes
        # (stacking a tensor per row cost more, and 30k small tensors grew the process by
        # ~40 MB); row 0 is zeros.
        self._bias_cache: OrderedDict[tuple[str, State], int] = OrderedDict()
        self._pool = torch.zeros(1024, self._n)
        self._pool_rows = self._pool.numpy()  # the same memory: a row is written through it
        self._rows = 1  # pool rows in use
        self._floors: dict[frozenset[int] | None, list[float]] = {}
        self._steps_cache: dict[State, _Steps] = {}
        self._ends: dict[State, list[int] | None] = {}  # what would end a word that goes on
        self._plain: set[tuple[str, State]] = set()  # (key, state)s weighing nothing
        self._seen: dict[str, tuple[int, str, str]] = {}
        # Blocks: target key -> (its block's first row in _hot.rows, whether each hot state
        # weighs nothing for it), least recently drawn first.
        self._blocks: OrderedDict[str, tuple[int, list[bool]]] = OrderedDict()
        # Built with the guard (~0.15 s for chitchat, part of a model's cold load), not at
        # the first reply drawn.
        self._hot = self._hot_states() if self._weighing else None

    # -- states -------------------------------------------------------------------------

    def start(self, seed_text: str = "") -> State:
        """The state after the text a message begins with (which may end mid-word)."""
        state = START
        for char in seed_text:
            info = self._seen.get(char)
            if info is None:
                info = self._seen[char] = _classify(char)
            state = self._next(state, info)
        return state

    def advance(self, state: State, char_id: int) -> State:
        return self._next(state, self._chars[char_id], char_id)

    @staticmethod
    def word(state: State) -> str | None:
        """The word `state` is inside (lowercased, as far as written), or None outside one.
        When the state moves out of it, that word was written."""
        # "don'" then a space wrote "don": the apostrophe closed a quote (see _next)
        return state[1].rstrip("'") if state[0] == _WORD_MODE else None

    def last_word(self, text: str) -> Last | None:
        """The last word `text` wrote, as `words` reads it: the word a reply starting after
        `text` must not repeat straight away (`biases`). None where `text` ends inside a word:
        that one is the user's to finish ("ha ha" may end as it is)."""
        found = words(text)
        if not found or self.word(self.start(text)) is not None:
            return None
        return Last(found[-1])

    @staticmethod
    def written(word: str, odds: Sequence[float], after: State) -> Last | None:
        """`word` as a row's last, now that the row has moved on to state `after`, from the
        odds each of its letters and then its end were drawn at (one more than its letters;
        else without odds). None if it was not a word after all: a URL's scheme ("http:")."""
        if after[0] == _URL:
            return None
        if len(odds) != len(word) + 1:
            return Last(word)
        tails, going = [], 1.0
        for p in reversed(odds[1:]):
            going *= p
            tails.append(going)
        return Last(word, tuple(reversed(tails)))

    def _next(self, state: State, char: tuple[int, str, str], char_id: int | None = None) -> State:
        """The state after `char`; `char_id` is None for a seed's characters (all taken)."""
        kind, low, raw = char
        mode = state[0]
        if kind == _SPACE:  # whitespace (and EOM) ends every token
            return START
        if mode == _URL:
            return state
        wordy = kind in (_LETTER, _DIGIT)
        if mode == _WORD_MODE:
            word: str = state[1]
            if wordy:
                return (_WORD_MODE, word + low)
            if word.endswith("'"):  # "don'" + "?": the word was "don", the "'" punctuation
                return self._next(PUNCT, char)
            if kind == _APOS:
                return (_WORD_MODE, word + "'")
            return URL if _URL_OPENER.get(word) == low else PUNCT
        if mode == _FREE:
            return FREE if wordy else FREE_APOS if kind == _APOS else PUNCT
        if mode in (_FREE_APOS, _SIGIL_MODE):
            return FREE if wordy else self._next(PUNCT, char)
        if mode == _CODE:
            _, written, shadow = state
            if raw == ":":
                return CLOSED if written else state
            if raw in _CODE_CHARS:
                # The plain reading goes along while the rules allow it ("+" may not end
                # ":swond+"); once broken, the code can only go on or close.
                ok = char_id is None or char_id in self._strict(shadow)
                return (_CODE, True, self._next(shadow, char) if ok else BROKEN)
            return self._next(shadow, char)  # not a code after all: the plain reading goes on
        # Outside a word.
        if kind == _LETTER:
            return (_WORD_MODE, low)
        if kind == _DIGIT:
            return FREE
        if kind == _SIGIL:
            return SIGIL
        if raw == ":" and mode != _PUNCT:
            return CODE_OPEN
        return PUNCT

    # -- masks --------------------------------------------------------------------------

    def allowed(self, state: State) -> torch.Tensor | None:
        """Bool mask of shape (len(vocab),), True where the id may come next; None when
        every id may (or, defensively, when none could). The rule `biases` applies, as a
        mask (it reads the same cached row)."""
        ids = self._allowed_ids(state)
        return None if ids is None else torch.tensor(self._floor(ids)) == 0

    def _allowed_ids(self, state: State) -> frozenset[int] | None:
        """The ids `allowed` lets through; None for every id."""
        ids = self._strict(state)
        if state[0] == _WORD_MODE and not ids:
            ids = self._enders  # a word nothing continues (a seed's) ends here
        return None if not ids or len(ids) == self._n else ids

    def biases(self, rows: Sequence[tuple[State, str]],
               lasts: Sequence[Last | None] | None = None) -> torch.Tensor | None:
        """What to add to the logits of each (state, target key) row, as one (len(rows),
        len(vocab)) tensor: -inf where `allowed` says no, the target's word weights elsewhere
        (0 for a key without counted words: ""); None if every row may draw anything at
        no weight. With `lasts` (each row's last word written, and the odds it was drawn
        at), a row may not write that word again straight away (`_repeat`)."""
        found = self._biases(rows)
        where: list[int] = []
        which: list[int] = []
        weights: list[float] = []
        for r, ((state, _key), last) in enumerate(zip(rows, lasts, strict=True) if lasts
                                                  is not None else ()):
            if last is not None and (repeat := self._repeat(state, last)) is not None:
                ids, weight = repeat
                where += [r] * len(ids)
                which += ids
                weights += [weight] * len(ids)
        if where:  # one call for all rows: a call a row cost as much as the rest of the step
            if found is None:
                found = torch.zeros(len(rows), self._n)
            found.index_put_((torch.tensor(where), torch.tensor(which)), torch.tensor(weights),
                             accumulate=True)
        return found

    def _repeat(self, state: State, last: Last) -> tuple[list[int], float] | None:
        """What keeps a row from writing its last word again straight away ("just just"):
        the ids that go on spelling it from `state` and what to add to them, or None.
        Chitchat's top 10 repeated a word straight away in 11 % of their replies, where 1 %
        of their messages do: their own words weighed and the contrast with anyone both favour
        a person's favourite word wherever a word starts, also right after it (BENCHMARKS.md,
        twenty-second session).

        The word is taken out of the draw by the odds it was drawn at when it was written
        (`Last.tails`, the odds of spelling the rest of it from each letter on): each next
        letter of it is weighed by 1 - those odds, and once it is spelled in full it may not
        end there. The weights go in with the word weights, so the boost and the temperature
        sharpen them as they do those (about (1 - odds) ** ((1 + boost) / temperature)):
        firmer than the odds alone, which keeps rows off the word's path from its first
        letter. Banning only the end made rows that meant to repeat a word spell a longer one
        instead ("just justin", "that thats"; BENCHMARKS.md)."""
        word, tails = last
        mode = state[0]
        if mode in _OUTSIDE:
            written = ""
        elif mode == _WORD_MODE and (word.startswith(state[1]) or state[1] == word + "'"):
            written = state[1]
        else:
            return None
        if written.rstrip("'") == word:  # in full ("i'" too): no end here, if it can go on
            found = self._ends.get(state, False)
            if found is False:
                going = self._extending(written, self.lexicon.continuations(written))
                ends = (self._strict(state) & self._enders) - going
                found = sorted(ends) if going and ends else None
                if len(self._ends) >= _CACHE_LIMIT:
                    self._ends.clear()
                self._ends[state] = found
            return None if found is None else (found, -math.inf)
        ids = self._by_low.get(word[len(written)])
        if tails is None or not ids:
            return None
        return ids, math.log1p(-min(tails[len(written)], MOST_REPEATED))

    def _biases(self, rows: Sequence[tuple[State, str]]) -> torch.Tensor | None:
        """`biases`, without keeping rows from repeating their last word."""
        slots, hot_rows = [], []
        cache, plain = self._bias_cache, self._plain
        counted = self.wording.targets if self._weighing and self.wording is not None else {}
        hot, taken = self._hot, set[str]()
        for state, key in rows:
            k = hot.index.get(state) if hot is not None and key in counted else None
            block = None if k is None else self._block(key, taken)
            if block is not None:
                taken.add(key)
                if not block[1][k]:
                    slots.append(0)
                    hot_rows.append(block[0] + k)
                    continue
                key = ""  # the row everyone without weights there gets
            hot_rows.append(0)
            # One row per state for everyone without weights there.
            key = key if key in counted and (key, state) not in plain else ""
            slot = cache.get((key, state))
            if slot is None:
                slot = self._bias(state, key)
            else:
                cache.move_to_end((key, state))
            slots.append(slot)
        if hot is not None and any(hot_rows):  # a pool row or a block's, the other's 0
            return self._pool.index_select(0, torch.tensor(slots)).add_(
                hot.rows.index_select(0, torch.tensor(hot_rows)))
        if not any(slots):
            return None
        return self._pool.index_select(0, torch.tensor(slots))

    def _hot_states(self) -> _Hot:
        """The `hot` commonest word states and what is the same for every target there:
        their spans and floors (`_Hot`)."""
        assert self.wording is not None
        wording = self.wording
        counted, total = Lexicon._sorted(wording.words), wording._cumulative

        def mass(prefix: str) -> int:  # the workspace's use of the words it begins
            start, stop = wording.span(prefix)
            return total[stop] - total[start]

        # Best first from the empty word: a prefix is used no more than the one it extends.
        states, heap = [], [(-mass(c), c) for c in counted.continuations("")]
        heapq.heapify(heap)
        while heap and len(states) < self.hot:
            prefix = heapq.heappop(heap)[1]
            states.append((_WORD_MODE, prefix))
            for c in counted.continuations(prefix):
                heapq.heappush(heap, (-mass(prefix + c), prefix + c))
        spans: list[tuple[int, int]] = []
        starts, child = [], np.full((len(states), self._n), -1, np.int64)
        floors = np.zeros((len(states), self._n), np.float32)
        for k, state in enumerate(states):
            found, groups = self._steps(state)
            starts.append(len(spans))
            # The state's own span first, then one a group, in _steps' order: the enders
            # last, as _bias weighs them (an apostrophe may be both).
            spans += [tuple(bound) for bound in found.bounds.tolist()]
            for j, group in enumerate(groups):
                if found.theirs[1 + j]:  # else never weighed: an id in two keeps the other's
                    child[k, group] = starts[-1] + 1 + j
            floors[k] = self._floor(self._allowed_ids(state))
        first = np.array(starts, np.int64)
        return _Hot({state: k for k, state in enumerate(states)}, wording.spans(spans), first,
                    np.repeat(first, np.diff(np.append(first, len(spans)))), child, floors,
                    torch.zeros(1 + min(2, BLOCKS) * len(states), self._n))

    def _block(self, key: str, taken: set[str]) -> tuple[int, list[bool]] | None:
        """`key`'s block of hot rows: where it starts in _hot.rows, and the hot states where
        the target weighs nothing. Worked out for all hot states at once, as `_bias` would
        one at a time; past BLOCKS, the least recently drawn target's block is reused, unless
        the rows asked for now are `taken` from it (then None: one row at a time)."""
        found = self._blocks.get(key)
        if found is not None:
            self._blocks.move_to_end(key)
            return found
        if len(self._blocks) >= BLOCKS and next(iter(self._blocks)) in taken:
            return None
        hot = self._hot
        assert hot is not None and self.wording is not None
        prior = self.wording.prior(key)
        assert prior is not None
        used, r = prior.uses(hot.spans)
        # Nothing weighed where the target used none of the state's words, or the workspace
        # none of the words of its own span (`ratios` gives None).
        plain = ~np.logical_or.reduceat(used > 0, hot.starts) | np.isnan(r[hot.starts])
        weights = np.nan_to_num(self._weight(key) * (r - r[hot.parents]), nan=0.0)
        rows = hot.floors + np.append(weights, 0.0)[hot.child]  # -1: no weight (the 0)
        if len(self._blocks) < BLOCKS:
            first = 1 + len(self._blocks) * len(hot.index)
            if first + len(hot.index) > len(hot.rows):  # room for twice the blocks, up to BLOCKS
                grown = torch.zeros(1 + min(2 * len(self._blocks), BLOCKS) * len(hot.index),
                                    self._n)
                grown[: len(hot.rows)] = hot.rows
                hot.rows = grown
        else:
            first = self._blocks.popitem(last=False)[1][0]
        hot.rows[first : first + len(hot.index)] = torch.from_numpy(rows.astype(np.float32))
        self._blocks[key] = found = first, plain.tolist()
        return found

    def _weight(self, key: str) -> float:
        """λ for a counted target: the guard's, or by how many of its words were counted."""
        found = self._weights.get(key)
        if found is None:
            from mimic.trainer.wording import OWN_WORDS, SMALL_OWN_WORDS, by_words

            assert self.wording is not None
            found = self._weights[key] = (
                self.weight if self.weight is not None
                else by_words(self.wording.count(key) or 0, SMALL_OWN_WORDS, OWN_WORDS))
        return found

    def _bias(self, state: State, key: str) -> int:
        """The pool row holding what `biases` adds for (state, key), worked out now (0: the
        row of zeros, nothing to add)."""
        weights = None
        if key:
            prior = self.wording.prior(key)
            spans, groups = self._steps(state)
            ratios = prior.ratios(spans) if len(spans) else None
            if ratios is None or ratios[0] is None:  # nothing weighed: everyone's row
                if len(self._plain) >= _CACHE_LIMIT:
                    self._plain.clear()
                self._plain.add((key, state))
                found = self._bias_cache.get(("", state))
                return found if found is not None else self._bias(state, "")
            weights = [(group, self._weight(key) * (there - ratios[0]))
                       for group, there in zip(groups, ratios[1:], strict=True)
                       if there is not None]
        ids = self._allowed_ids(state)
        slot = 0
        if ids is not None or weights:
            # A list, then one copy into the pool: torch's or numpy's calls cost more.
            floor = self._floor(ids)
            row = floor.copy()
            for group, weight in weights or ():  # the enders' last: an apostrophe ends a word
                for i in group:
                    row[i] = floor[i] + weight
            slot = self._free_slot()
            self._pool_rows[slot] = row
        self._bias_cache[key, state] = slot
        return slot

    def _free_slot(self) -> int:
        """A pool row to write: a new one (the pool doubles up to _BIASES rows), or the least
        recently drawn one's."""
        if self._rows < len(self._pool_rows):  # (a tensor's len is a Python call)
            self._rows += 1
            return self._rows - 1
        if len(self._pool_rows) <= _BIASES:
            grown = torch.zeros(min(2 * len(self._pool_rows), _BIASES + 1), self._n)
            grown[: len(self._pool_rows)] = self._pool
            self._pool, self._pool_rows = grown, grown.numpy()
            return self._free_slot()
        while True:  # entries of slot 0 hold no row: evict on until one frees a row
            slot = self._bias_cache.popitem(last=False)[1]
            if slot:
                return slot

    def _steps(self, state: State) -> _Steps:
        """What the word weights of a state need that is the same for every target (cached):
        the spans of the word list whose ratios they take, and the ids each weighs. First the
        words starting with the word so far, x; then for each next letter those starting
        with x and it, weighing the ids that spell it ("a", "A"); last the word x itself,
        weighing the enders. No spans where nothing is weighed (in a number, URL, code...).
        See trainer/wording.py."""
        found = self._steps_cache.get(state)
        if found is not None:
            return found
        assert self.wording is not None
        span = self.wording.span
        mode = state[0]
        spans: list[tuple[int, int]] = []
        groups: list[list[int]] = []
        if mode in (*_OUTSIDE, _WORD_MODE):
            word = state[1] if mode == _WORD_MODE else ""
            allowed = self._strict(state)
            by_low: dict[str, list[int]] = {}  # "a" and "A" lead to the same words
            for i in sorted(allowed):
                kind, low, _ = self._chars[i]
                if kind in (_LETTER, _DIGIT, _APOS):
                    by_low.setdefault(low, []).append(i)
            spans = [span(word), *(span(word + low) for low in by_low)]
            groups = list(by_low.values())
            enders = sorted(allowed & self._enders) if mode == _WORD_MODE else []
            if enders:
                spans.append(span(word[:-1] if word.endswith("'") else word, whole=True))
                groups.append(enders)
        steps = self.wording.spans(spans), groups
        if len(self._steps_cache) >= _CACHE_LIMIT:
            self._steps_cache.clear()
        self._steps_cache[state] = steps
        return steps

    def _strict(self, state: State) -> frozenset[int]:
        """The ids the rules allow, without fallbacks (may be none), cached."""
        ids = self._strict_cache.get(state)
        if ids is not None:
            return ids
        mode = state[0]
        if mode in _OUTSIDE:
            nexts = self.lexicon.continuations("") | self._schemes.get("", set())
            starts = self._extending("", nexts)
            ids = starts | (self._everything - self._letters)
        elif mode == _WORD_MODE:
            ids = self._word(state[1])
        elif mode == _CODE:
            ids = self._code | self._strict(state[2])
        elif mode == _BROKEN:
            ids = frozenset()
        else:
            ids = self._everything
        if len(self._strict_cache) >= _CACHE_LIMIT:
            self._strict_cache.clear()
        self._strict_cache[state] = ids
        return ids

    def _word(self, word: str) -> frozenset[int]:
        lexicon = self.lexicon
        if word.endswith("'"):  # only word characters can join, and the word was word[:-1]
            ids = self._extending(word, lexicon.continuations(word))
            return ids | self._enders if word[:-1] in lexicon else ids
        ids = self._extending(word, lexicon.continuations(word) | self._schemes.get(word, set()))
        if word in lexicon:
            ids |= self._enders
        opener = _URL_OPENER.get(word)
        if opener is not None:
            ids |= frozenset(i for i, c in enumerate(self._chars) if c[2] == opener)
        return ids

    def _extending(self, word: str, nexts: set[str]) -> frozenset[int]:
        """The ids whose lowercase form, appended to `word`, stays a prefix of a word."""
        ids = [i for low in nexts for i in self._by_low.get(low, ())]
        ids += [i for i, low in self._multi if self.lexicon.is_prefix(word + low)]
        return frozenset(ids)

    def _floor(self, ids: frozenset[int] | None) -> list[float]:
        """A row of 0 for `ids` (None: all), -inf for the rest (shared: copy it to change)."""
        row = self._floors.get(ids)
        if row is None:
            row = [0.0 if ids is None or i in ids else -math.inf for i in range(self._n)]
            if len(self._floors) >= _CACHE_LIMIT:
                self._floors.clear()
            self._floors[ids] = row
        return row
