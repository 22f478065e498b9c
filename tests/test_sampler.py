"""Sampling, the novelty filter and draw()."""

from __future__ import annotations

import math
import weakref
from itertools import pairwise
from pathlib import Path

import pytest
import torch

from mimic.trainer.fit import TrainConfig, fit
from mimic.trainer.lexicon import Lexicon, WordGuard, words
from mimic.trainer.model import CharLSTM, ModelConfig
from mimic.trainer.novelty import WINDOW, NoveltyIndex
from mimic.trainer.reading import stutters
from mimic.trainer.registry import LoadedModel
from mimic.trainer.sampler import (
    BOOST,
    CASE_PRIOR,
    DEDICATED_BOOST,
    DEDICATED_HEAT,
    END_ODDS,
    LONG_SLOPE,
    Generation,
    NoNovelText,
    Row,
    draw,
    reply,
    sample,
    sample_rows,
)
from mimic.trainer.vocab import Vocab

SECRET = "my locker code is 4417 and the wifi password is hunter2, ok?"
MESSAGES = [SECRET, "lunch at noon?", "sure, see you there", "who broke the build again"] * 30


@pytest.fixture(scope="module")
def trained() -> tuple[CharLSTM, Vocab]:
    """A tiny model that has memorised MESSAGES (so it readily regurgitates SECRET)."""
    vocab = Vocab.build(MESSAGES, min_count=1)
    ids = vocab.encode_corpus(MESSAGES)
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(len(vocab), embed_dim=16, hidden_size=64, num_layers=1))
    cfg = TrainConfig(
        batch_size=16,
        seq_len=64,
        lr=1e-2,
        warmup_steps=5,
        max_seconds=0,
        max_steps=200,
        eval_every_s=0,
        eval_every_steps=200,
    )
    fit(model, ids, ids[:2000], cfg, torch.device("cpu"))
    return model, vocab


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sample_shapes_and_seed(trained: tuple[CharLSTM, Vocab]) -> None:
    model, vocab = trained
    texts = sample(model, vocab, n=3, seed_text="lun", max_len=50, generator=gen())
    assert len(texts) == 3
    assert all(t.startswith("lun") and len(t) <= 50 and "\n" not in t for t in texts)
    # Unknown seed characters are fine (they go in as UNK); UNK never comes out.
    out = sample(model, vocab, n=2, seed_text="λ", max_len=30, generator=gen())
    assert all(t.startswith("λ") and "\ufffd" not in t for t in out)
    full = sample(model, vocab, n=2, max_len=40, generator=gen(), stop_at_eom=False)
    assert all(len(t) == 40 for t in full)


def test_tiny_temperature_is_deterministic(trained: tuple[CharLSTM, Vocab]) -> None:
    model, vocab = trained
    a = sample(model, vocab, n=4, temperature=1e-4, seed_text="who", generator=gen(1))
    b = sample(model, vocab, n=4, temperature=1e-4, seed_text="who", generator=gen(2))
    assert a == b and len(set(a)) == 1
    assert a[0] == "who broke the build again"
    # And a fixed generator seed reproduces ordinary sampling too.
    c = sample(model, vocab, n=4, temperature=1.0, generator=gen(7))
    assert c == sample(model, vocab, n=4, temperature=1.0, generator=gen(7))


@pytest.mark.parametrize("temperature", [0, -0.5, 2.01, 100, math.nan, math.inf])
def test_invalid_temperature_raises(trained: tuple[CharLSTM, Vocab], temperature: float) -> None:
    model, vocab = trained
    with pytest.raises(ValueError, match="temperature"):
        sample(model, vocab, temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        draw(model, vocab, None, temperature=temperature)


def test_top_k_one_is_greedy(trained: tuple[CharLSTM, Vocab]) -> None:
    model, vocab = trained
    greedy = sample(model, vocab, n=2, temperature=1e-4, seed_text="su")
    assert sample(model, vocab, n=2, temperature=1.5, top_k=1, seed_text="su") == greedy
    with pytest.raises(ValueError, match="top_k"):
        sample(model, vocab, top_k=0)


def test_novelty_index_finds_planted_copy(tmp_path: Path) -> None:
    index = NoveltyIndex.build(MESSAGES)
    planted = "so anyway " + SECRET[5 : 5 + WINDOW] + " lol"
    assert index.has_copy(planted) and index.longest_copy(planted) == WINDOW
    assert index.longest_copy("xx" + SECRET + "yy") == len(SECRET)
    assert not index.has_copy(SECRET[: WINDOW - 1])  # one short of the window
    assert not index.has_copy("entirely new words that nobody in this channel ever typed")
    assert not index.has_copy(SECRET[: WINDOW + 10], span=WINDOW + 11)
    # Spans across message boundaries do not count.
    joined = MESSAGES[1] + MESSAGES[2]
    assert not index.has_copy(joined) and index.has_copy(MESSAGES[2] + " " * 30 + SECRET)
    # Corpora with no message as long as the window index nothing, and find nothing.
    assert len(NoveltyIndex.build(["short", ""])) == 0 and len(NoveltyIndex.build([])) == 0
    assert not NoveltyIndex.build(["short"]).has_copy("short" * 20)
    path = tmp_path / "novelty.npy"
    index.save(path)
    loaded = NoveltyIndex.load(path)
    assert len(loaded) == len(index) and loaded.has_copy(planted)


def test_draw_rejects_copies_and_accepts_novel(trained: tuple[CharLSTM, Vocab]) -> None:
    model, vocab = trained
    index = NoveltyIndex.build(MESSAGES)
    # Greedy from "my" regurgitates SECRET every time: every round is rejected.
    with pytest.raises(NoNovelText, match="verbatim"):
        draw(model, vocab, index, n=2, temperature=1e-4, seed_text="my", tries=3)
    # Greedy from "who" gives a short training message (< WINDOW chars): accepted.
    result = draw(model, vocab, index, n=2, temperature=1e-4, seed_text="who")
    assert result.texts == ["who broke the build again"] * 2 and result.rejected == 0
    # A seed that is itself a long copy can never pass.
    with pytest.raises(NoNovelText, match="seed"):
        draw(model, vocab, index, seed_text=SECRET)
    # Without an index nothing is rejected, and output is made inert.
    result = draw(model, vocab, None, n=1, temperature=1e-4, seed_text="<!here> @all my")
    assert result.texts[0].startswith("&lt;!here&gt; @\u2060all my")


def test_draw_counts_rejections_and_keeps_novel_ones(trained: tuple[CharLSTM, Vocab]) -> None:
    model, vocab = trained
    index = NoveltyIndex.build(MESSAGES)
    result = draw(model, vocab, index, n=4, temperature=2.0, tries=5, generator=gen(3))
    assert 1 <= len(result.texts) <= 4
    assert not any(index.has_copy(t) for t in result.texts)


def test_rows_with_their_own_seed_and_temperature_share_one_batch(
        trained: tuple[CharLSTM, Vocab]) -> None:
    model, vocab = trained
    rows = [Row("who", 1e-4), Row("lun", 1e-4), Row("", 1.5), Row("su", 1e-4), Row("who", 1e-4)]
    texts = sample_rows(model, vocab, rows, generator=gen(5))
    # Greedy rows give exactly what they give alone, whatever else shares (and leaves) the
    # batch: the short "sure, see you there" ends long before the others.
    for row, text in zip(rows, texts, strict=True):
        if row.temperature < 1:
            assert text == sample(model, vocab, n=1, temperature=row.temperature,
                                  seed_text=row.seed_text)[0]
        assert text.startswith(row.seed_text)
    assert texts[0] == texts[4] == "who broke the build again"
    assert sample_rows(model, vocab, []) == []
    with pytest.raises(ValueError, match="temperature"):
        sample_rows(model, vocab, [Row("", 0.5), Row("", 3.0)])


def test_draw_draws_again_only_what_was_refused(trained: tuple[CharLSTM, Vocab]) -> None:
    model, vocab = trained
    index = NoveltyIndex.build(MESSAGES)
    rounds = [[SECRET, "who broke the build again"], ["   "], ["lunch at noon?"]]
    asked: list[int] = []

    def sampler(k: int) -> list[str]:
        asked.append(k)
        return rounds.pop(0)[:k]

    result = draw(model, vocab, index, n=2, sampler=sampler)
    assert asked == [2, 1, 1]
    assert result.texts == ["who broke the build again", "lunch at noon?"]
    assert (result.rejected, result.blank) == (1, 1)


def fixed_odds(vocab: Vocab, probs: list[float]) -> CharLSTM:
    """A model whose next-symbol distribution is `probs` (EOM, UNK, then the characters)
    whatever came before."""
    model = CharLSTM(ModelConfig(len(vocab), embed_dim=4, hidden_size=8, num_layers=1))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.log(torch.tensor(probs)))
    return model


def test_temperature_shapes_the_words_not_the_length() -> None:
    """A model that ends a message with probability 0.2 at every character: a low temperature
    must not stop it from ending (tempering the end mark made messages run to max_len)."""
    vocab = Vocab(list("ab"))
    model = fixed_odds(vocab, [0.2, 1e-9, 0.7, 0.1])
    texts = sample(model, vocab, n=400, temperature=0.1, generator=gen(0))
    lengths = [len(t) for t in texts]
    end = 0.2 * END_ODDS / (1 + 0.2 * (END_ODDS - 1))  # the end mark's odds, times END_ODDS
    mean = (1 - end) / end  # geometric
    assert 0.75 * mean < sum(lengths) / len(lengths) < 1.25 * mean
    assert set("".join(texts)) == {"a"}  # the wording is as sharp as asked


def test_a_reply_never_writes_a_word_twice_in_a_row_where_it_could_go_on() -> None:
    """A model that laughs "ha ha ha" (its odds the same after every character): with the
    word guard, a reply never writes a word again straight away ("ha ha", "haha haha"), but
    may go on to a longer one ("ha haha"); only "hahaha", which nothing continues, may
    follow itself. The same draws without the rule stutter."""
    vocab = Vocab(list("ha "))
    model = fixed_odds(vocab, [0.05, 1e-9, 0.4, 0.35, 0.2])

    class Unruled(WordGuard):
        def biases(self, rows, lasts=None):  # type: ignore[no-untyped-def]
            return super().biases(rows)

    lexicon = Lexicon(["ha", "haha", "hahaha"])
    drawn = {rule: sample(model, vocab, n=300, guard=guard, generator=gen(3))
             for rule, guard in (("on", WordGuard(lexicon, vocab)),
                                 ("off", Unruled(lexicon, vocab)))}
    assert all(set(t.split()) <= set(lexicon) for texts in drawn.values() for t in texts)
    assert sum(map(stutters, drawn["off"])) > 100
    repeated = {a for t in drawn["on"] for a, b in pairwise(words(t)) if a == b}
    assert repeated <= {"hahaha"}
    assert sum("ha haha" in f" {t} " for t in drawn["on"]) > 10


def test_a_reply_past_the_workspaces_long_message_is_drawn_to_an_end() -> None:
    """A model that almost never ends a message (1e-4 a character) runs to max_len; a row with
    `long_after` ends soon after that length, at no cost to rows without one in its batch."""
    vocab = Vocab(list("ab"))
    model = fixed_odds(vocab, [1e-4, 1e-9, 0.5, 0.5])
    rows = [Row(long_after=40)] * 100 + [Row()] * 100
    lengths = [len(t) for t in sample_rows(model, vocab, rows, generator=gen(0))]
    bounded, free = lengths[:100], lengths[100:]
    assert sum(n < 40 for n in bounded) <= 3  # before it, the model's own odds
    assert max(bounded) < 40 + 30 * LONG_SLOPE * 40  # 30 doublings: certain by then
    assert sum(n == 280 for n in free) >= 90
    # However short the length and unlikely the end, the odds stay numbers: every message ends.
    never = fixed_odds(vocab, [1e-30, 1e-9, 0.5, 0.5])
    assert all(0 < len(t) < 20 for t in sample_rows(never, vocab, [Row(long_after=1)] * 50,
                                                     generator=gen(1)))


def test_a_reply_ends_before_the_cut_where_the_workspaces_long_messages_reach_it() -> None:
    """Where the workspace's long-message length is near max_len (speeches), the end is still
    drawn early enough that no reply runs to the cut and stops mid-word."""
    vocab = Vocab(list("ab"))
    model = fixed_odds(vocab, [1e-4, 1e-9, 0.5, 0.5])
    lengths = [len(t) for t in sample_rows(model, vocab, [Row(long_after=275)] * 200,
                                           generator=gen(0))]
    assert max(lengths) < 280
    assert sum(n > 150 for n in lengths) >= 190  # the model's own odds until then


def test_a_reply_is_ended_as_its_versions_lengths_say() -> None:
    """reply() (`mimic sample`'s path, without the bot's batch) draws the version's rows: a
    model that almost never ends is drawn to an end past its long-message length."""
    vocab = Vocab(list("ab"))
    model = fixed_odds(vocab, [1e-4, 1e-9, 0.5, 0.5])
    loaded = LoadedModel(1, 1, model, vocab, NoveltyIndex.build([]), long_message=40)
    texts = reply(loaded, "user:U1", n=30, generator=gen(3)).texts
    assert len(texts) == 30 and max(map(len, texts)) < 40 + 30 * LONG_SLOPE * 40


def test_each_row_ends_at_its_own_end_odds() -> None:
    """The factor on the end mark's odds is a row's (each model has its own, fitted): rows of
    one batch with x1 and x4 get the geometric lengths of their own odds."""
    vocab = Vocab(list("ab"))
    model = fixed_odds(vocab, [0.1, 1e-9, 0.5, 0.5])
    rows = [Row(end_odds=1.0)] * 300 + [Row(end_odds=4.0)] * 300
    lengths = [len(t) for t in sample_rows(model, vocab, rows, generator=gen(2))]
    for factor, got in ((1.0, lengths[:300]), (4.0, lengths[300:])):
        end = 0.1 * factor / (1 + 0.1 * (factor - 1))
        mean = (1 - end) / end
        assert 0.8 * mean < sum(got) / len(got) < 1.2 * mean, factor
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="end_odds"):
            sample_rows(model, vocab, [Row(end_odds=bad)])
        with pytest.raises(ValueError, match="boost"):
            sample_rows(model, vocab, [Row(boost=bad)])


def test_drawing_against_the_reference_favours_the_persons_own_habits() -> None:
    """The person writes a and b equally often; everyone else mostly a. Drawn against the
    workspace, b (the person's habit) wins; c is boosted most of all (the workspace never
    writes it) but the person rarely does either, so it is never drawn."""
    vocab = Vocab(list("abc"))
    person = fixed_odds(vocab, [0.2, 1e-9, 0.39, 0.39, 0.02])
    workspace = fixed_odds(vocab, [0.2, 1e-9, 0.7, 0.1, 1e-6])
    alone = "".join(sample(person, vocab, n=300, temperature=1.0, generator=gen(0)))
    contrasted = "".join(sample(person, vocab, n=300, reference=workspace, temperature=1.0,
                                generator=gen(0)))
    assert 0.4 < alone.count("b") / len(alone.replace("c", "")) < 0.6
    assert contrasted.count("b") / len(contrasted) > 0.8
    assert "c" in alone and "c" not in contrasted
    # The length is still the person's: the end mark is not contrasted.
    assert 0.8 < len(contrasted) / len(alone) < 1.25


def test_a_reply_starts_with_a_capital_as_often_as_its_person_does() -> None:
    """A capital A is 30 % of the person's letters, hardly any of the workspace's: the contrast
    and a low temperature make A the likeliest character by far, and would start nearly every
    reply with it. Whether the first letter is a capital is drawn at the person's
    own odds; the rest of the wording is as sharp as asked. Rows with a letter in their seed
    text are left alone."""
    vocab = Vocab(list("Aab."))
    person = fixed_odds(vocab, [0.1, 1e-9, 0.24, 0.46, 0.1, 0.1])
    workspace = fixed_odds(vocab, [0.1, 1e-9, 0.01, 0.69, 0.1, 0.1])
    texts = sample(person, vocab, n=600, reference=workspace, temperature=0.5,
                   generator=gen(0))
    firsts = [next(ch for ch in t if ch.isalpha()) for t in texts if any(map(str.isalpha, t))]
    share = firsts.count("A") / len(firsts)
    assert 0.24 < share < 0.36  # the person's 0.24 / (0.24 + 0.46 + 0.1), give or take
    rest = "".join(t[t.index(first) + 1:] for t, first in zip(
        (t for t in texts if any(map(str.isalpha, t))), firsts, strict=True))
    assert rest.count("A") / len(rest) > 0.8  # the wording after it: sharp and contrasted
    # A leading mark is no letter: the choice waits for the first letter.
    dotted = fixed_odds(vocab, [0.1, 1e-9, 0.12, 0.23, 0.05, 0.5])
    texts = sample(dotted, vocab, n=600, reference=workspace, temperature=0.5,
                   generator=gen(1))
    firsts = [next(ch for ch in t if ch.isalpha()) for t in texts if any(map(str.isalpha, t))]
    assert 0.24 < firsts.count("A") / len(firsts) < 0.36
    seeded = sample(person, vocab, n=200, reference=workspace, temperature=0.5,
                    seed_text="b", generator=gen(2))
    assert sum(t[1:2] == "A" for t in seeded) > 0.8 * sum(len(t) > 1 for t in seeded)


def test_a_reply_starts_like_its_persons_messages_the_models_odds_counting_as_a_few() -> None:
    """Row.capitals, counted in the person's messages, sets the odds of a capital first letter
    (the model's own counting as CASE_PRIOR more messages), whatever the model's odds are:
    with a thousand messages, theirs; with a handful, mostly the model's; the letters within
    each case and the wording after them as before."""
    vocab = Vocab(list("Aab."))
    person = fixed_odds(vocab, [0.1, 1e-9, 0.24, 0.46, 0.1, 0.1])  # A: 0.3 of the letters
    workspace = fixed_odds(vocab, [0.1, 1e-9, 0.01, 0.69, 0.1, 0.1])

    def capitalised(capitals: tuple[int, int], seed: int) -> float:
        texts = sample_rows(person, vocab, [Row(temperature=0.5, capitals=capitals)] * 800,
                            reference=workspace, generator=gen(seed))
        firsts = [next(ch for ch in t if ch.isalpha()) for t in texts
                  if any(map(str.isalpha, t))]
        assert set(firsts) <= {"A", "a", "b"} and "b" in firsts  # "a" and "b" both drawn
        return firsts.count("A") / len(firsts)

    model = 0.24 / (0.24 + 0.46 + 0.1)
    for capitals, seed in (((900, 1000), 0), ((20, 1000), 1), ((2, 2), 2), ((0, 0), 3)):
        wanted = (capitals[0] + CASE_PRIOR * model) / (capitals[1] + CASE_PRIOR)
        assert abs(capitalised(capitals, seed) - wanted) < 0.06, capitals  # 800 draws: ~0.016


def test_each_rows_first_letter_follows_its_own_counts_as_rows_come_and_go() -> None:
    """Rows of someone who always starts with a capital and of someone who never does,
    interleaved, half of them joining after some of the others have finished: each row's
    first letter follows its own counts (the batch's state stays in step with its rows)."""
    vocab = Vocab(list("Aab."))
    model = fixed_odds(vocab, [0.1, 1e-9, 0.24, 0.46, 0.1, 0.1])
    rows = [Row(temperature=1.0, capitals=(1000, 1000) if i % 2 else (0, 1000))
            for i in range(400)]
    generation = Generation(model, vocab, generator=gen(5))
    ids = generation.add(rows[:200])
    for _ in range(4):
        generation.step()
    assert len(generation) < 200  # some have finished: the batch was compacted
    ids += generation.add(rows[200:])
    while generation.active:
        generation.step()
    texts = generation.take(ids)
    assert texts is not None
    for always in (True, False):
        firsts = [next(ch for ch in t if ch.isalpha()) for row, t in zip(rows, texts, strict=True)
                  if (row.capitals[0] > 0) == always and any(map(str.isalpha, t))]
        share = sum(ch.isupper() for ch in firsts) / len(firsts)
        assert len(firsts) > 100 and (share > 0.95 if always else share < 0.05), (always, share)


def test_a_rows_counts_must_be_counts() -> None:
    vocab = Vocab(list("Aab."))
    generation = Generation(fixed_odds(vocab, [0.1, 1e-9, 0.24, 0.46, 0.1, 0.1]), vocab)
    for bad in ((3, 2), (-1, 5), (1.5, 2)):
        with pytest.raises(ValueError, match="capitals must be"):
            generation.add([Row(capitals=bad)])  # type: ignore[arg-type]


def test_reply_draws_against_the_versions_reference(trained: tuple[CharLSTM, Vocab]) -> None:
    """reply() draws the version's own rows: against its reference when it has one (a
    dedicated model: DEDICATED_BOOST, DEDICATED_HEAT x the temperature asked), and ended as its
    lengths say."""
    model, vocab = trained
    other = ["the weather is lovely today", "shall we go for a walk later"] * 60
    torch.manual_seed(1)
    reference = CharLSTM(model.config)
    fit(reference, vocab.encode_corpus(other), vocab.encode_corpus(other[:20]),
        TrainConfig(batch_size=16, seq_len=64, lr=1e-2, warmup_steps=5, max_seconds=0,
                    max_steps=150, eval_every_s=0, eval_every_steps=150),
        torch.device("cpu"))
    with_reference = LoadedModel(1, 1, model, vocab, NoveltyIndex.build([]), reference)
    plain = LoadedModel(1, 1, model, vocab, NoveltyIndex.build([]))
    assert (with_reference.row("user:U1", temperature=1.2).boost,
            with_reference.row("user:U1", temperature=1.2).temperature) == \
        (DEDICATED_BOOST, pytest.approx(1.2 * DEDICATED_HEAT))
    assert with_reference.row("user:U1", temperature=2.0).temperature == 2.0  # the most there is
    assert (plain.row("user:U1", temperature=1.2).boost,
            plain.row("user:U1", temperature=1.2).temperature) == (BOOST, 1.2)
    for loaded in (with_reference, plain):
        served = reply(loaded, "user:U1", n=20, temperature=1.0, generator=gen(4)).texts
        direct = sample_rows(model, vocab, [loaded.row("user:U1", temperature=1.0)] * 20,
                             reference=loaded.reference, generator=gen(4))
        first_round = [t for t in direct if t.strip()]  # blanks are drawn again after it
        assert served[: len(first_round)] == first_round
    assert reply(with_reference, "user:U1", n=20, temperature=1.0, generator=gen(4)).texts != \
        reply(plain, "user:U1", n=20, temperature=1.0, generator=gen(4)).texts


def conditioned_model() -> CharLSTM:
    """A small conditioned model (people, channels, adapters, habits), its weights moved away
    from the zeros the offsets, habits and adapters start at."""
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(30, embed_dim=8, hidden_size=16, num_layers=2, people=4,
                                 channels=3, rank=4, habits=3)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_one_step_at_a_time_is_the_model_itself() -> None:
    """The sampler's hand-written LSTM step (contexts, adapters and habits precomputed per
    row) gives the logits the model's own forward pass gives, for every voice; with 8-bit
    weights, the same next-character odds to within 0.05 in log-probability."""
    from mimic.trainer.sampler import _Stepper

    model = conditioned_model()
    x = torch.randint(30, (4, 7))
    people, channels = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 0])
    with torch.inference_mode():
        expected, _ = model(x, None, people[:, None].expand(4, 7), channels[:, None].expand(4, 7))
        for int8, close in ((False, 1e-5), (True, 0.05)):
            step = _Stepper(model, int8=int8)
            assert bool(step.packed) == int8  # (this torch has the int8 kernel on CPU)
            ctx = step.contexts(people, channels)
            h, c = torch.zeros(2, 4, 16), torch.zeros(2, 4, 16)
            for t in range(7):
                logits = step(x[:, t], h, c, ctx)
                assert torch.allclose(logits.log_softmax(-1), expected[:, t].log_softmax(-1),
                                      atol=close)


def test_a_steps_kept_contexts_are_the_ones_it_works_out(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """Contexts are kept per (person, channel) pair: asked again, in any order and mix, a
    pair gives what working it out gives, and no more than CONTEXTS pairs are kept."""
    from mimic.trainer import sampler

    monkeypatch.setattr(sampler, "CONTEXTS", 3)
    model = conditioned_model()
    step = sampler._Stepper(model)
    with torch.inference_mode():
        for people, channels in [([0, 1], [0, 0]), ([1, 0, 2, 3], [0, 0, 1, 2]), ([3, 3], [2, 2])]:
            who, where = torch.tensor(people), torch.tensor(channels)
            kept, fresh = step.contexts(who, where), step._work_out(who, where)
            assert kept.keys() == fresh.keys() == {"g", "ca", "b0", "b1", "b2", "hw", "hb"}
            for key in fresh:
                # (to rounding: a product's sums run in another order for another batch)
                assert torch.allclose(kept[key], fresh[key], rtol=1e-5, atol=1e-6), key
            pairs = set(zip(people, channels, strict=True))
            assert len(step._contexts) <= max(3, len(pairs))


def test_a_step_is_built_once_for_the_weights_it_has() -> None:
    """The bot reuses a net's step from batch to batch, but a net trained since (its weights
    changed in place) gets a new one: never logits from the weights it had before."""
    from mimic.trainer.sampler import stepper

    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(30, embed_dim=8, hidden_size=16, num_layers=2)).eval()
    cpu = torch.device("cpu")
    first = stepper(model, cpu)
    assert stepper(model, cpu) is first
    with torch.no_grad():
        model.head.bias.add_(1.0)  # as an optimizer step does
    again = stepper(model, cpu)
    assert again is not first
    x = torch.randint(30, (1, 1))
    with torch.inference_mode():
        expected, _ = model(x)
        got = again(x[:, 0], torch.zeros(2, 1, 16), torch.zeros(2, 1, 16), {})
    assert torch.allclose(got.log_softmax(-1), expected[:, 0].log_softmax(-1), atol=0.05)
    # Kept by net, but never keeping one alive: a model the bot's cache let go is freed.
    gone = weakref.ref(model)
    del model, first, again
    assert gone() is None


def test_a_dedicated_models_rows_write_in_the_shared_batch_what_they_write_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows written by dedicated nets in their shared model's batch, beside its own rows and
    joining and ending at different steps, write what each writes in a batch of its own drawn
    against the shared model: greedily, with float products (int8's activation scales follow
    the whole batch)."""
    import copy

    from mimic.trainer import sampler
    from mimic.trainer.sampler import Generation, Voice

    monkeypatch.setattr(sampler, "INT8", False)
    vocab = Vocab(list("abcdefghij "))
    torch.manual_seed(0)
    shared = CharLSTM(ModelConfig(len(vocab), embed_dim=8, hidden_size=16, num_layers=2,
                                  people=4, channels=3, rank=4, habits=3)).eval()
    with torch.no_grad():
        for p in shared.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    own = [copy.deepcopy(shared) for _ in range(2)]
    with torch.no_grad():
        for net in own:
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.3)
    greedy = 1e-4
    said = ((2, 1, "abc def"), (3, 1, "gh"))
    mine = [Row("a", greedy, Voice(1, 1, (0, 1))), Row("", greedy, Voice(2, 0, (0, 0)), said)]
    theirs = [[Row("bb", greedy, Voice(3, 1, (0, 1)), said), Row("", greedy, Voice(1, 2, (0, 2)))],
              [Row("c", greedy, Voice(2, 2, (0, 2)))]]

    def alone(net: CharLSTM, rows: list[Row], reference: CharLSTM | None) -> list[str]:
        batch = Generation(net, vocab, reference=reference, max_len=9, stop_at_eom=False)
        ids = batch.add(rows)
        while batch.active:
            batch.step()
        return batch.take(ids) or []

    batch = Generation(shared, vocab, max_len=9, stop_at_eom=False)
    ids = [batch.add(mine)]
    batch.step()
    ids.append(batch.add(theirs[0], own[0]))
    batch.step()
    batch.step()
    ids.append(batch.add(theirs[1], own[1]))
    ids.append(batch.add(theirs[0][:1], own[0]))  # beside rows of the same net
    while batch.active:
        batch.step()
    assert [batch.take(i) for i in ids] == [alone(shared, mine, None),
                                             alone(own[0], theirs[0], shared),
                                             alone(own[1], theirs[1], shared),
                                             alone(own[0], theirs[0][:1], shared)]
    assert batch._own == [] and len(batch) == 0
    with pytest.raises(ValueError, match="conditioned"):
        Generation(own[0], vocab, reference=shared).add(theirs[1], own[1])


def test_reading_many_contexts_at_once_is_reading_each() -> None:
    """What a reply reads first: rows of different lengths read in one packed call end in
    the state each reaches read alone, whoever wrote each character."""
    model = conditioned_model()
    lengths = [9, 3, 6]
    x = torch.randint(1, 30, (3, 9))
    people = torch.randint(0, 4, (3, 9))
    channels = torch.randint(0, 3, (3, 9))
    with torch.inference_mode():
        h, c = model.read(x, torch.tensor(lengths), people, channels)
        for j, n in enumerate(lengths):
            _, (h1, c1) = model(x[j : j + 1, :n], None, people[j : j + 1, :n],
                                channels[j : j + 1, :n])
            assert torch.allclose(h[:, j], h1[:, 0], atol=1e-6)
            assert torch.allclose(c[:, j], c1[:, 0], atol=1e-6)


def test_primer_reads_once_and_serves_every_thread_the_state_read_alone() -> None:
    """Contexts read together in one packed pass, from several threads at once: each gets the
    state its context reaches read alone, and a cached one is not read again."""
    import threading

    from mimic.trainer.sampler import Primer

    class Counting(CharLSTM):
        passes = 0

        def read(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            Counting.passes += 1
            return super().read(*args, **kwargs)

    torch.manual_seed(0)
    vocab = Vocab.build(["abcdefgh ijk"], min_count=1)
    model = Counting(ModelConfig(len(vocab), embed_dim=8, hidden_size=16, num_layers=2,
                                 people=4, channels=3, rank=4, habits=3)).eval()
    contexts = [((i % 4, i % 3, "abc" * (i + 1)), (1, 0, "hij" * i)) for i in range(24)]
    primer = Primer(vocab)
    results: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    start = threading.Barrier(4)

    def read(part: int) -> None:
        start.wait()
        mine = contexts[part::4]
        h, c = primer.read(model, mine)
        for j, i in enumerate(range(part, len(contexts), 4)):
            results[i] = (h[:, j : j + 1], c[:, j : j + 1])

    threads = [threading.Thread(target=read, args=(part,)) for part in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counting.passes == 4 and len(primer) == len(contexts)
    for i, context in enumerate(contexts):
        h, c = Primer(vocab).read(model, [context])  # alone, in a fresh primer
        assert torch.allclose(results[i][0], h, atol=1e-6)
        assert torch.allclose(results[i][1], c, atol=1e-6)
    passes = Counting.passes
    primer.read(model, [contexts[0], (), contexts[5]])  # cached (and a zero state): no pass
    assert Counting.passes == passes


def test_a_reply_reads_only_the_newest_characters_of_its_context() -> None:
    """Contexts that differ only before their last `chars` characters (end marks included)
    reach the same state; a difference inside them, or in who wrote them, shows."""
    from mimic.trainer.sampler import PRIMED_CHARS, Primer

    torch.manual_seed(0)
    vocab = Vocab.build(["abcdefgh ijk"], min_count=1)
    model = CharLSTM(ModelConfig(len(vocab), embed_dim=8, hidden_size=16, num_layers=2,
                                 people=4, channels=3, rank=4, habits=3)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    older = ((1, 0, "hij" * 7), (2, 0, "abc ab"))
    other = ((3, 1, "kkk"), (2, 0, "abc ab"))  # the same last 7: an end mark, then "abc ab"
    near = ((1, 0, "hij" * 7), (2, 0, "abd ab"))
    voice = ((1, 0, "hij" * 7), (3, 0, "abc ab"))
    with torch.inference_mode():
        h = [Primer(vocab, chars=7).read(model, [c])[0] for c in (older, other, near, voice)]
        whole = [Primer(vocab, chars=10**6).read(model, [c])[0] for c in (older, other)]
    assert torch.equal(h[0], h[1])
    assert not torch.allclose(h[0], h[2], atol=1e-4) and not torch.allclose(h[0], h[3], atol=1e-4)
    assert not torch.allclose(whole[0], whole[1], atol=1e-4)  # uncut, the older text counts
    assert Primer(vocab).chars == PRIMED_CHARS


def test_drawing_one_character_is_what_multinomial_draws() -> None:
    """The sampler's own draw takes the same characters from the same generator as
    torch.multinomial, zero-odds characters never."""
    from mimic.trainer.sampler import draw_one

    probs = torch.rand(64, 30, generator=torch.Generator().manual_seed(1))
    probs[:, :10] = 0
    probs[5] = 0
    probs[5, 17] = 1  # a row with one possible character
    for seed in range(5):
        ours = draw_one(probs, torch.Generator().manual_seed(seed))
        theirs = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(ours, theirs[:, 0])
        assert (ours >= 10).all() and ours[5] == 17
