"""The lexicon and the word guard: whatever path a sampler takes through the allowed characters,
every word it completes is one the workspace has used (or a number, URL, mention, emoji code)."""

from __future__ import annotations

import math
import random
import re
import string
from pathlib import Path

import pytest
import torch

from mimic.trainer.lexicon import START, Last, Lexicon, State, WordGuard, words
from mimic.trainer.vocab import Vocab

LINES = [
    "Morning all! Who's around for standup?",
    "I'm here, running 5 min late though",
    "don't worry, we'll wait for you",
    "@alice can you review my PR when you get a chance?",
    "Sure, looking at it now :eyes:",
    "LGTM :+1: merged",
    "the build is green again :white_check_mark:",
    "see https://example.com/docs/setup for the setup steps",
    "or www.example.org if that one's down",
    "Deploying v2.3.1 to staging at 3pm",
    "nice :tada::tada:",
    "lunch? I'm thinking tacos",
    "yes please, tacos are always the answer",
    "can't make it today, sorry :cry:",
    "We should move the retro to Thursday",
    "#random has the photos from the offsite",
    "The students' projects were great",
    "lol :p",
    "It's 90's night at the bar on Friday",
    "who broke the tests?? they were passing an hour ago",
    "my bad, reverting now",
    "ok tests pass again :thumbsup::skin-tone-2:",
    "Is the mp3 from the meeting uploaded?",
    "it's in the drive, folder 2024",
    "thanks! you're the best",
    "_really_ appreciate it",
    "Anyone else seeing the VPN drop every 10 minutes?",
    "yeah same here, IT is on it",
    "restart fixed it for me",
    "heading out, see you tomorrow",
    "have a good one!",
    "happy Friday everyone :beers:",
]
# ~90 characters: the lines' own and the rest of printable ASCII (every path is cheap to walk).
SMALL = Vocab.build([*LINES, string.printable[:-5]], min_count=1)
# An independent reading of the rules, to judge generated text by.
_URL = re.compile(r"(?<!\w)(?:https?:|www\.)\S*", re.IGNORECASE)
_MENTION = re.compile(r"(?<!\w)[@#]\w+(?:'\w+)*")
_CODES = re.compile(r"(?<!\S)(?::+[a-z0-9_+\-]+:)+")
_OPEN_CODE = re.compile(r"(?<!\S)(?::+[a-z0-9_+\-]+:)*:+[a-z0-9_+\-]*\Z")  # still going


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return Lexicon.build(LINES)


@pytest.fixture(scope="module")
def guard(lexicon: Lexicon) -> WordGuard:
    return WordGuard(lexicon, SMALL)


def allowed_text(guard: WordGuard, seed: str) -> set[str] | None:
    """The characters allowed after `seed` (EOM shows as a newline); None when all are."""
    mask = guard.allowed(guard.start(seed))
    if mask is None:
        return None
    assert mask.shape == (len(guard.vocab),) and mask.dtype == torch.bool
    return set(guard.vocab.decode(mask.nonzero()[:, 0].tolist()))


def allows(guard: WordGuard, seed: str, chars: str) -> bool:
    """Whether each of `chars` may follow `seed` ("\\n" stands for EOM)."""
    mask = guard.allowed(guard.start(seed))
    ids = [guard.vocab.eom if c == "\n" else guard.vocab.stoi[c] for c in chars]
    return mask is None or all(bool(mask[i]) for i in ids)


def refuses(guard: WordGuard, seed: str, chars: str) -> bool:
    """Whether none of `chars` may follow `seed`."""
    mask = guard.allowed(guard.start(seed))
    ids = [guard.vocab.eom if c == "\n" else guard.vocab.stoi[c] for c in chars]
    return mask is not None and not any(bool(mask[i]) for i in ids)


def invented(text: str, lexicon: Lexicon) -> list[str]:
    """Completed words of `text` that are not in the lexicon and not exempt (numbers, URLs,
    mentions, closed emoji codes). A word running up to the end of the text is unfinished."""
    patterns = (_URL, _MENTION, _CODES, _OPEN_CODE)
    exempt = [m.span() for pattern in patterns for m in pattern.finditer(text)]
    end = len(text.rstrip("'"))
    return [m.group() for m in re.finditer(r"\w+(?:'\w+)*", text.lower())
            if m.end() < end and m.group() not in lexicon and not m.group()[0].isdigit()
            and not any(a <= m.start() and m.end() <= b for a, b in exempt)]


def walk(guard: WordGuard, rng: random.Random, seed: str, steps: int) -> tuple[str, list[State]]:
    """A random path through the allowed characters: letters and spaces drawn more often, so
    words get long and special tokens still turn up."""
    vocab = guard.vocab
    weights = [1.0 if i < 2 else 6.0 if c.isalpha() else 4.0 if c == " " else 1.0
               for i, c in enumerate(vocab.itos)]
    weights[vocab.unk] = 0.2
    state, ids, states = guard.start(seed), [], []
    for _ in range(steps):
        states.append(state)
        mask = guard.allowed(state)
        choices = range(len(vocab)) if mask is None else mask.nonzero()[:, 0].tolist()
        char_id = rng.choices(choices, [weights[i] for i in choices])[0]
        ids.append(char_id)
        state = guard.advance(state, char_id)
    return seed + vocab.decode(ids), states


def test_the_lexicon_holds_every_word(lexicon: Lexicon) -> None:
    assert set(lexicon) == {w for line in LINES for w in words(line)}
    assert {"don't", "mp3", "students", "_really_", "i'm"} <= set(lexicon)
    assert "don" not in lexicon and "Don't" not in lexicon


def test_lexicon_queries(lexicon: Lexicon) -> None:
    assert len(lexicon) == len(list(lexicon))
    assert list(lexicon) == sorted(lexicon)
    assert lexicon.is_prefix("tac") and lexicon.is_prefix("tacos") and lexicon.is_prefix("")
    assert not lexicon.is_prefix("swo") and not lexicon.is_prefix("tacosx")
    assert lexicon.continuations("don") == {"'"}
    assert lexicon.continuations("s") >= {"a", "e", "o", "t", "u"}
    assert lexicon.continuations("tacos") == set()
    twice = Lexicon.build(LINES, min_count=2)
    assert "tacos" in twice and "lunch" not in twice
    assert len(Lexicon()) == 0 and not Lexicon().is_prefix("")
    with pytest.raises(ValueError, match="line break"):
        Lexicon(["two\nwords"])


def test_save_and_load(tmp_path: Path, lexicon: Lexicon) -> None:
    path = tmp_path / "lexicon.txt"
    lexicon.save(path)
    assert Lexicon.load(path) == lexicon
    assert path.read_text(encoding="utf-8").splitlines()[1:] == list(lexicon)
    other = Lexicon(["café", "naïve", "東京", "x"])
    other.save(path)
    loaded = Lexicon.load(path)
    assert loaded == other and "東京" in loaded and loaded.is_prefix("caf")
    Lexicon().save(path)
    assert len(Lexicon.load(path)) == 0
    path.write_text("import os\nb\na", encoding="utf-8")
    with pytest.raises(ValueError, match="not a mimic lexicon"):
        Lexicon.load(path)
    path.write_text("mimic-lexicon 1\nb\na", encoding="utf-8")
    with pytest.raises(ValueError, match="sorted"):
        Lexicon.load(path)


def test_the_guard_spells_exactly_the_lexicon(guard: WordGuard) -> None:
    """Every word the guard lets a message complete, over all paths: the lexicon's own."""
    vocab, eom = guard.vocab, guard.vocab.eom
    inner = [i for i, c in enumerate(vocab.itos) if i >= 2 and (re.match(r"\w", c) or c == "'")]
    found, seen = set(), set()
    stack = [(guard.advance(guard.start(), i), vocab.itos[i].lower()) for i in inner
             if vocab.itos[i] != "'" and not vocab.itos[i].isdigit()
             and allows(guard, "", vocab.itos[i])]
    while stack:
        state, word = stack.pop()
        if state in seen:
            continue
        seen.add(state)
        mask = guard.allowed(state)
        assert mask is not None  # inside a checked word something is always at stake
        if mask[eom] and not word.endswith("'"):  # ("we'" + EOM: a quote after "we")
            found.add(word)
        stack += [(guard.advance(state, i), word + vocab.itos[i].lower()) for i in inner
                  if mask[i] and not (word.endswith("'") and vocab.itos[i] == "'")]
    assert found == {w for w in guard.lexicon if not w[0].isdigit()}
    assert len(found) > 120


@pytest.mark.parametrize("seed", ["", "see ", "https:", "@", ":", ":thumbsup:", "don'",
                                  "don't wor", "3", "www", "lol :", "Th"])
def test_random_walks_invent_nothing(guard: WordGuard, seed: str) -> None:
    rng = random.Random(f"walk {seed}")
    for _ in range(40):
        text, states = walk(guard, rng, seed, 120)
        assert invented(text, guard.lexicon) == [], text
        for state in states:  # never all-False, and all-True comes back as None
            mask = guard.allowed(state)
            assert mask is None or (bool(mask.any()) and not bool(mask.all()))


def test_a_word_ends_only_where_a_real_word_ends(guard: WordGuard) -> None:
    assert allows(guard, "I want tacos", " ,.!?\n:")
    assert refuses(guard, "I want taco", " ,.!?\n:'")
    assert allowed_text(guard, "I want taco") == set("sS")
    assert allows(guard, "the", " \n") and allows(guard, "the", "y")  # "the" and "they"
    assert allows(guard, "", "tTsS\n @:(") and refuses(guard, "", "zZqQ")


def test_apostrophes(guard: WordGuard) -> None:
    assert allowed_text(guard, "don") == set("'")  # "don" alone is no word: only "don't" goes on
    assert allowed_text(guard, "don'") == set("tT")
    assert allows(guard, "don't", " \n,")
    assert allows(guard, "The students", "' ")  # a word, so a closing quote may follow
    assert allows(guard, "The students'", " \n.") and refuses(guard, "The students'", "s")
    assert allows(guard, "that one", "'") and refuses(guard, "that one'", "t")
    assert allows(guard, "that one'", "s")
    assert allows(guard, "tacos", "'") and refuses(guard, "tacos'", "sS")  # a closing quote
    assert allows(guard, " '", "tT")  # a quote outside a word is punctuation


def test_case(guard: WordGuard) -> None:
    assert allows(guard, "", "DdIi")
    assert allowed_text(guard, "DON") == set("'")
    assert allows(guard, "DON'", "Tt") and allows(guard, "DoN'T", " \n")
    assert allows(guard, "LGTM", " \n") and allows(guard, "TaC", "oO")


def test_numbers_are_free_until_they_end(guard: WordGuard) -> None:
    assert guard.allowed(guard.start("at 3")) is None
    assert guard.allowed(guard.start("at 3zq")) is None  # "3zq" starts with a digit
    assert guard.allowed(guard.start("the 9")) is None
    assert guard.allowed(guard.start("the 90'")) is None
    assert refuses(guard, "at 3zq ", "zq")  # after the number, words are checked again
    assert refuses(guard, "at 90''", "zq")  # two quotes end a word: "zq" would be a new one
    assert refuses(guard, "at 3.q", "z")
    assert allows(guard, "at 3pm mp", "3")  # a digit inside a word is the word's business


def test_urls(guard: WordGuard) -> None:
    bare = WordGuard(Lexicon(["hello"]), SMALL)  # no word starts "ht" or "w": schemes still can
    assert allows(bare, "", "hHwW") and refuses(bare, "", "tT")
    assert allowed_text(bare, "h") == set("eEtT")
    assert allowed_text(bare, "htt") == set("pP")
    assert allowed_text(bare, "http") == set(":sS")
    assert allowed_text(bare, "https") == set(":")
    assert allowed_text(bare, "ww") == set("wW") and allowed_text(bare, "www") == set(".")
    for seed in ("https:", "http://", "https://zq.example/abc?x=1", "www.", "WWW.zq", "HTTP:"):
        assert bare.allowed(bare.start(seed)) is None, seed
    assert refuses(bare, "https://zq.example/abc ", "zqt")  # whitespace ends the URL
    assert refuses(bare, "http", " \n.")  # "http" is not a word of this workspace
    assert bare.allowed(bare.start("(https:")) is None  # any word may start a URL
    assert refuses(guard, "http", "xX") and refuses(bare, "http", "xX")
    # "www.example.org" is a URL, not the word "www": the word may not end there either.
    assert allows(guard, "www", ".") and refuses(guard, "www", " \n")


def test_no_scheme_without_its_opener() -> None:
    """A vocabulary without ":" and "." cannot open a URL: "https" is then an unknown word
    like any other, not a start that could only end as one."""
    vocab = Vocab.build(["hello there, what's up", "HTTPS PTW"], min_count=1)
    guard = WordGuard(Lexicon(["there", "up"]), vocab)
    assert refuses(guard, "", "hHwW") and refuses(guard, "", "pP")
    assert refuses(guard, "h", "tT")


def test_mentions_and_channels(guard: WordGuard) -> None:
    for seed in ("@", "@zq", "hi @zqx", "(#", "#zz_top", "@bob's"):
        assert guard.allowed(guard.start(seed)) is None, seed
    assert refuses(guard, "@zqx ", "zqZQ")  # the name ended: words are checked again
    assert refuses(guard, "@zqx.", "zq") and refuses(guard, "@zqx''", "zq")
    assert refuses(guard, "hello@", "zq")  # straight after a word it is no mention


def test_emoji_codes(guard: WordGuard) -> None:
    opened = allowed_text(guard, ":")
    assert opened is not None and set("abcdefghijklmnopqrstuvwxyz0123456789_+-:") <= set(opened)
    assert allowed_text(guard, ":zqx_") is not None
    assert allows(guard, ":zqx_", "zq+-19:") and refuses(guard, ":zqx_", " \n.,")
    assert allows(guard, ":+1", ":") and allows(guard, "nice :+1:", " \n")
    assert allows(guard, ":thumbsup::skin-tone-2", ":")
    assert allows(guard, ":thumbsup:", ":") and allows(guard, ":thumbsup::", "zq")
    assert refuses(guard, ":zq:zq", "")  # after a closed code, a word is checked...
    assert refuses(guard, ":eyes:zq", "z") and refuses(guard, ":eyes: ", "zq")
    assert refuses(guard, "the:", "zq")  # ...and a colon after a word opens nothing
    assert refuses(guard, "the :zq", " \n")  # an unclosed code must have been words
    assert allows(guard, "lol :p", " \n") and refuses(guard, "lol :q", " \n")
    assert allows(guard, "lol :", ")") and allows(guard, "lol :)", " \n")
    assert allows(guard, ":", "D") and refuses(guard, ":", "Z")  # ":D" starts a word "d..."


def test_seed_ending_mid_word(guard: WordGuard) -> None:
    assert allowed_text(guard, "I was wor") == set("rR")  # worry
    assert allowed_text(guard, "we'll wait for y") == set("eoEO")  # yes, you, you're
    # A seed's unknown word: nothing can continue it, so it may only end.
    assert allowed_text(guard, "I think swo") == set(guard.vocab.decode(
        i for i, c in enumerate(guard.vocab.itos) if i < 2 or not re.match(r"\w", c)))
    assert refuses(guard, "I think swo", "ndND") and allows(guard, "I think swo", " \n'")
    assert refuses(guard, "I think swo ", "zq")  # and after it the rules hold again


def test_words_the_vocabulary_cannot_spell_are_left_out() -> None:
    vocab = Vocab(list("abcdefghijklmnopqrstuvwxyz ."))
    guard = WordGuard(Lexicon(["cafe", "café", "caff", "cab"]), vocab)
    assert set(guard.lexicon) == {"cafe", "caff", "cab"}
    assert allowed_text(guard, "caf") == set("ef")
    trap = WordGuard(Lexicon(["cafés"]), vocab)  # "caf" could only go on with "é"
    assert refuses(trap, "", "c")
    assert allows(trap, "caf", " .\n")  # (only a seed gets here) it ends rather than stalls


def test_never_all_false() -> None:
    """Odd vocabularies and lexicons: no state reached ever allows nothing."""
    cases = [
        (Lexicon(), Vocab(list("ab"))),
        (Lexicon(), Vocab([])),
        (Lexicon(["x'y"]), Vocab(list("x'"))),
        (Lexicon(["zz"]), Vocab(list("z:"))),
        (Lexicon.build(LINES), Vocab(list("aeiou'@#:htpsw."))),
    ]
    rng = random.Random(7)
    for lexicon, vocab in cases:
        guard = WordGuard(lexicon, vocab)
        for seed in ("", "x'", ":", "zz ", "q", "@", "abc:", "http"):
            for _ in range(20):
                _, states = walk(guard, rng, seed, 30)
                for state in states:
                    mask = guard.allowed(state)
                    assert mask is None or bool(mask.any())


def test_states_are_small_values_and_batches_stack(guard: WordGuard) -> None:
    states = [guard.start(s) for s in ("", "tac", "https:", "3")]
    assert all(isinstance(s, tuple) and hash(s) == hash(s) for s in states)
    assert guard.advance(states[1], SMALL.stoi["o"]) == guard.start("taco")
    biases = guard.biases([(s, "") for s in states])
    assert biases is not None and biases.shape == (4, len(SMALL))
    assert (biases[2] == 0).all() and (biases[3] == 0).all()
    # Without counted words, the bias is the mask: 0 where allowed, -inf elsewhere.
    mask = guard.allowed(states[1])
    assert mask is not None and torch.equal(biases[1] == 0, mask)
    assert torch.isinf(biases[1][~mask]).all() and not mask.all()
    assert guard.biases([(states[2], ""), (states[3], "user:U1")]) is None


def test_a_row_may_not_write_its_last_word_again_where_it_could_go_on() -> None:
    """After "ha", the next word's "h" weighs 1 - the odds "ha" was finished at from its
    "h" (`Last.tails`); spelled in full again ("ha", or "ha'" closing a quote), "ha" may not
    end but may go on ("hat", "ha'd"); "hat", which nothing continues, may follow itself."""
    vocab = Vocab(list("hat .'d:/"))
    guard = WordGuard(Lexicon(["ha", "ha'd", "hat", "to", "http"]), vocab)
    ids = {c: vocab.stoi[c] for c in "hat .'d"}
    last = guard.written("ha", [0.5, 0.8, 0.9], START)  # h, a, then the end
    assert last == Last("ha", (0.8 * 0.9, 0.9))
    assert guard.written("http", [0.5] * 5, guard.start("http:")) is None  # a URL's scheme
    assert guard.written("ha", [0.5], START) == Last("ha")  # odds not one for one: none
    # The last word the text wrote; none where it ends inside a word (the user's to finish).
    assert guard.last_word("so ha hat ") == Last("hat") and guard.last_word("ha.") == Last("ha")
    assert guard.last_word("so ha hat") is None and guard.last_word("") is None
    states = [guard.start(s) for s in ("ha ", "ha h", "ha ha", "hat hat", "ha t", "ha ha'")]
    lasts = [last, last, last, Last("hat", (1.0, 1.0, 1.0)), last, last]
    plain = guard.biases([(s, "") for s in states])
    biases = guard.biases([(s, "") for s in states], lasts)
    assert plain is not None and biases is not None and not biases.isnan().any()
    extra = biases - plain
    extra[torch.isinf(plain)] = 0  # what was never allowed stays so
    assert extra[0, ids["h"]] == pytest.approx(math.log(1 - 0.72))
    assert extra[1, ids["a"]] == pytest.approx(math.log(1 - 0.9))
    # Spelled in full: what would end it is banned (space, ".", the end, ":"...), what goes
    # on is not.
    for row, going in ((2, "t'"), (5, "d")):
        banned = {vocab.itos[i] for i in (extra[row] == -math.inf).nonzero()[:, 0].tolist()}
        assert {" ", ".", vocab.itos[vocab.eom]} <= banned and not banned & set("hatd")
        assert all(biases[row, ids[c]] == 0 for c in going)  # on to "hat", "ha'd"
    assert torch.equal(biases[3], plain[3])  # nothing continues "hat": it may repeat
    assert torch.equal(biases[4], plain[4])  # another word under way
    extra[0, ids["h"]] = extra[1, ids["a"]] = 0
    extra[2] = extra[5] = 0
    assert not extra.any()  # nothing else moved
    assert torch.equal(guard.biases([(states[0], "")], [None]), plain[:1])  # no last word
