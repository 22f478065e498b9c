"""The shared workspace model: one conditioned char-LSTM for everyone. Its streams, its voices,
the nightly warm start, how it is served, and the edge cases around it (real torch, tiny
models)."""

from __future__ import annotations

import collections
import gc
import itertools
import json
import math
import random
from pathlib import Path

import pytest
import torch
from sqlalchemy import select, update

from mimic.bot.batching import SampleBatcher, _Batch, _Job
from mimic.bot.models import ModelCache
from mimic.bot.replies import Responder
from mimic.core.config import Settings
from mimic.core.store import Coverage, Message, ModelVersion, Store, User, make_engine, upgrade
from mimic.exporter.importer import import_export
from mimic.trainer.corpus import BASE, Said, Workspace, load_corpus, load_workspace, resolve
from mimic.trainer.fit import TrainConfig, evaluate, fit
from mimic.trainer.lexicon import words
from mimic.trainer.model import (
    CharLSTM,
    ModelConfig,
    Slots,
    load_model,
)
from mimic.trainer.privacy import opt_out
from mimic.trainer.registry import (
    LENGTHS,
    WEIGHTS,
    WORDING,
    active_version,
    load_version,
    serving,
    version_dir,
)
from mimic.trainer.sampler import END_ODDS, LONG_QUANTILE, Voice, sample
from mimic.trainer.shared import carry_over, encode, loss_on, target_stream
from mimic.trainer.train import TrainError, _incremental, _warm_start, train
from mimic.trainer.vocab import Vocab
from mimic.trainer.wording import Wording
from tests import trained, workspace
from tests.slack_export import write_export

SHOUTS = ["CATS ARE GREAT!!", "I LOVE MY CAT!!", "WHO WANTS CAT PICS!!"]
WHISPERS = ["the boat is slow", "i think the sea is calm", "my boat needs paint"]


@pytest.fixture(scope="module")
def two_voices() -> tuple[CharLSTM, Vocab, Slots]:
    """Alice shouts and bob whispers, taking turns in one channel: only who writes tells
    them apart, so the model must learn it from their vectors."""
    rng = random.Random(0)
    chat = [Said(str(1000 + i), who, "C1", rng.choice(lines))
            for i, (who, lines) in enumerate(itertools.islice(itertools.cycle(
                [("U1", SHOUTS), ("U2", WHISPERS)]), 400))]
    vocab = Vocab.build([m.text for m in chat], min_count=1)
    slots = Slots(("U1", "U2"), ("C1",))
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(len(vocab), embed_dim=16, hidden_size=48, num_layers=1,
                                 people=3, channels=2, context_dim=8, rank=8))
    # float32 pinned: the same steps in bfloat16 learn bob's capitals differently (0.6, not
    # 0.26, of his letters below); tests/test_model.py covers the choice between the two.
    cfg = TrainConfig(batch_size=8, seq_len=32, lr=1e-2, warmup_steps=5, max_seconds=0,
                      max_steps=250, eval_every_s=0, eval_every_steps=250, anyone_share=0.2,
                      precision="float32")
    fit(model, encode(vocab, slots, chat[:360]), encode(vocab, slots, chat[360:]), cfg,
        torch.device("cpu"))
    return model, vocab, slots


def test_each_voice_is_its_vector(two_voices: tuple[CharLSTM, Vocab, Slots]) -> None:
    model, vocab, slots = two_voices
    alice = [Said("1", "U1", "C1", t) for t in SHOUTS * 3]
    own = evaluate(model, target_stream(vocab, slots, "user:U1", alice))
    anyone = evaluate(model, target_stream(vocab, slots, "user:U1", alice, anyone=True))
    assert own < anyone - 0.1  # her vector knows she shouts
    # A message's first letter is a capital at the model's own odds (the rows bring no counts
    # of the person's messages, Row.capitals), neither sharpened by the temperature nor
    # contrasted with anyone's (trainer/sampler.py, Generation._case): this small model gives
    # bob's about a third, and a message begun in capitals goes on in them.
    for person, upper in ((1, True), (2, False)):
        texts = sample(model, vocab, n=100, temperature=0.5, voice=Voice(person, 1),
                       generator=torch.Generator().manual_seed(person))
        letters = [ch for t in texts for ch in t if ch.isalpha()]
        share = sum(ch.isupper() for ch in letters) / len(letters)
        assert share > 0.9 if upper else share < 0.5, (person, texts[:3])


def test_a_carried_over_model_keeps_who_it_knew(two_voices: tuple[CharLSTM, Vocab, Slots]
                                                ) -> None:
    model, vocab, slots = two_voices
    # Bob left (opted out, say), carol arrived; alice keeps her vector, carol starts as anyone.
    new = Slots(("W3", "U1"), ("C1",))
    carried = carry_over(model, slots, new).eval()
    x = torch.tensor([vocab.encode("CATS ARE")])

    def logits(net: CharLSTM, person: int) -> torch.Tensor:
        with torch.inference_mode():
            return net(x, None, torch.full_like(x, person), torch.ones_like(x))[0]

    assert carried.config.people == 3
    assert torch.allclose(logits(model, slots.person("U1")), logits(carried, new.person("U1")))
    assert torch.allclose(logits(carried, new.person("W3")), logits(carried, 0))
    assert not torch.allclose(logits(model, slots.person("U2")), logits(carried, 0))


def test_an_older_mimics_checkpoint_still_loads(tmp_path: Path) -> None:
    """Format 1 (one nn.LSTM for every layer, no conditioning) is read into today's layers."""
    vocab = Vocab(list("abc "))
    model = CharLSTM(ModelConfig(len(vocab), embed_dim=8, hidden_size=16, num_layers=2))
    legacy = {}
    for key, value in model.state_dict().items():
        if key.startswith("layers."):
            layer, name = key[len("layers."):].split(".", 1)
            key = f"lstm.{name[:-len('_l0')]}_l{layer}"
        legacy[key] = value
    path = tmp_path / "old.pt"
    torch.save({"format": 1, "config": vars(model.config) | {}, "state_dict": legacy,
                "vocab": vocab.to_json()}, path)
    loaded, loaded_vocab, slots = load_model(path)
    x = torch.tensor([[2, 3, 4, 5]])
    with torch.inference_mode():
        assert torch.allclose(loaded(x)[0], model.eval()(x)[0])
    assert loaded_vocab == vocab and slots == Slots()


def test_the_nightly_run_trains_on_what_is_new_and_a_replay() -> None:
    old = [Said(str(i), "U1", "C1", "x" * 99) for i in range(200)]  # 100 chars each
    new = [Said(str(200 + i), "U2", "C1", "y" * 99) for i in range(10)]
    picked = _incremental(Workspace(["U1", "U2"], ["C1"], old + new, {}, {}, None, ""), "199")
    assert set(new) <= set(picked)
    warmup = [m for m in picked if m in old[-20:]]
    assert 20 <= len(warmup) <= 21  # the 2,000 characters before them, for context
    replayed = len(picked) - len(new) - len(warmup)
    assert 35 <= replayed <= 50  # 4 x the new characters, in spans of old messages


def test_warm_start_unless_someone_covered_opted_out(world: tuple[Store, Settings]) -> None:
    store, settings = world
    with store.session() as s:
        previous = active_version(s, BASE.key)
        shared = load_workspace(s, settings, settings.min_chars)
        assert _warm_start(s, settings, previous, shared) is not None
    opt_out(store, settings.data_dir, "U2")
    with store.session() as s:
        shared = load_workspace(s, settings, settings.min_chars)
        assert "U2" not in shared.people
        # bob's text must leave the weights, not only his vector: from scratch.
        assert _warm_start(s, settings, previous, shared) is None


def test_a_warm_started_model_is_published_with_its_coverage(
        world: tuple[Store, Settings]) -> None:
    store, settings = world
    outcome = train(store, settings, BASE, train_overrides={**trained.QUICK, "max_steps": 20})
    assert outcome.version == 2 and "warm start" in outcome.note
    with store.session() as s:
        row = s.scalars(select(ModelVersion).where(ModelVersion.target == BASE.key,
                                                   ModelVersion.version == 2)).one()
        covered = {c.target for c in s.scalars(select(Coverage).where(
            Coverage.version_id == row.id))}
        folder = version_dir(settings.data_dir, row)
    assert covered == {"user:U1", "user:U2", "channel:C1", "channel:C2"}
    assert {"model.pt", "novelty.npy", "lexicon.txt"} <= {p.name for p in folder.iterdir()}


def test_an_empty_workspace_is_a_clear_error(tmp_path: Path) -> None:
    settings = trained.settings_for(tmp_path)
    upgrade(make_engine(settings.database_url))
    store = Store(make_engine(settings.database_url))
    with pytest.raises(TrainError, match="Nobody has written enough"):
        train(store, settings, BASE)
    import_export(store, write_export(tmp_path / "export"))  # a few lines each: too little
    with pytest.raises(TrainError, match="at least 500 characters"):
        train(store, settings, BASE)


def test_replies_start_with_real_words(world: tuple[Store, Settings]) -> None:
    """Read the person's last messages first and keep to the lexicon: no reply starts in
    the middle of a word, and every word is one the workspace used."""
    store, settings = world
    with store.session() as s:
        row = active_version(s, BASE.key)
        shared = load_workspace(s, settings, settings.min_chars)
    loaded = load_version(settings.data_dir, row, "cpu")  # type: ignore[arg-type]
    # The lexicon holds every eligible word, the newest tenth (validation) included.
    known = {w for m in [*shared.train, *(m for v in shared.val.values() for m in v)]
             for w in words(m.text)}
    for key, lines in (("user:U1", workspace.ALICE), ("user:U2", workspace.BOB)):
        context = [(key.split(":")[1], line) for line in lines[:3]]
        r = loaded.row(key, temperature=1.0, context=context)
        texts = sample(loaded.model, loaded.vocab, n=30, guard=loaded.guard, voice=r.voice,
                       context=r.context, temperature=1.0,
                       generator=torch.Generator().manual_seed(3))
        found = [words(t) for t in texts if words(t)]
        assert found and not [(w, t) for t in texts for w in words(t) if w not in known]


def test_the_shared_model_knows_how_long_the_workspaces_messages_run(
        world: tuple[Store, Settings]) -> None:
    """The shared model's version records the length LONG_QUANTILE of the workspace's
    messages stay within, and the end odds fitted to its people's message lengths; every reply
    drawn from it is drawn to an end past that, at those odds. A version from before the fit
    uses END_ODDS; a damaged record is a damaged version (the bot then serves the one
    before)."""
    store, settings = world
    with store.session() as s:
        row = active_version(s, BASE.key)
        shared = load_workspace(s, settings, settings.min_chars)
    assert row is not None
    texts = {m.text for m in [*shared.train, *(m for v in shared.val.values() for m in v)]}
    lengths = sorted(map(len, texts))
    loaded = load_version(settings.data_dir, row, "cpu")
    assert loaded.long_message == lengths[int(LONG_QUANTILE * (len(lengths) - 1))] > 0
    assert loaded.row("user:U1").long_after == loaded.own_long.get("user:U1", loaded.long_message)
    path = version_dir(settings.data_dir, row) / LENGTHS
    recorded = json.loads(path.read_text())
    fit = recorded["fit"]
    # The measured factor whose replies came nearest the people's length; the record rounds
    # lengths to 0.1, so two near-equal distances may compare either way as read back.
    target, measured = fit["target"], fit["measured"]
    off = {odds: abs(math.log(max(length, 0.1) / target)) for odds, length in measured}
    rounding = 0.1 / min(max(length, 0.1) for _odds, length in measured) + 0.1 / target
    assert loaded.end_odds == recorded["end_odds"] in off
    assert off[loaded.end_odds] <= min(off.values()) + rounding
    own = recorded["own_odds"]  # each fitted person's own factor on it
    assert own and set(own) <= {f"user:{user}" for user in shared.people}
    for key in ("user:U1", "user:U2"):
        assert loaded.row(key).end_odds == loaded.end_odds * own.get(key, 1.0)
    assert recorded["own_long"] == dict(loaded.own_long)  # people with LONG_MESSAGES or more
    # Fitted people whose wording narrowed at the full boost are drawn at a lower one.
    assert set(recorded["own_boost"]) <= set(own)
    for key, boost in recorded["own_boost"].items():
        assert 0 < loaded.row(key).boost == boost
    # From END_ODDS: this workspace has no one past its biggest senders, whose fit this is
    # (everyone else's would start from theirs).
    assert fit["measured"][0][0] == END_ODDS and fit["target"] > 0
    path.write_text(json.dumps({"long_message": 7}))
    plain = load_version(settings.data_dir, row, "cpu")
    assert plain.end_odds == END_ODDS
    path.write_text(json.dumps({"long_message": 7, "own_boost": {"user:U1": 1.25}}))
    lowered = load_version(settings.data_dir, row, "cpu")
    assert lowered.row("user:U1").boost == 1.25 != plain.row("user:U1").boost
    assert lowered.row("user:U2").boost == plain.row("user:U2").boost
    for damaged, why in (('{"long_message": "many"}', "whole number"),
                         ('{"long_message": 7, "end_odds": -2}', "end_odds"),
                         ('{"long_message": 7, "own_odds": {"user:U1": 0}}', "own_odds"),
                         ('{"long_message": 7, "own_odds": {"U1": 1.5}}', "by person"),
                         ('{"long_message": 7, "own_odds": 3}', "not a mimic lengths file"),
                         ('{"long_message": 7, "own_long": {"user:U1": -1}}', "own_long"),
                         ('{"long_message": 7, "own_long": {"user:U1": 9.5}}', "whole number"),
                         ('{"long_message": 7, "own_long": {"U1": 90}}', "by person"),
                         ('{"long_message": 7, "own_long": [3]}', "not a mimic lengths file"),
                         ('{"long_message": 7, "own_boost": {"user:U1": -1}}', "own_boost"),
                         ('{"long_message": 7, "own_boost": {"user:U1": NaN}}', "own_boost"),
                         ('{"long_message": 7, "own_boost": {"user:U1": "3"}}', "own_boost"),
                         ('{"long_message": 7, "own_boost": {"U1": 2}}', "by person"),
                         ('{"long_message": 7, "own_boost": [2]}', "not a mimic lengths file"),
                         ("[7]", "not a mimic lengths file")):
        path.write_text(damaged)
        with pytest.raises(ValueError, match=why):
            load_version(settings.data_dir, row, "cpu")


def test_the_shared_model_counts_its_peoples_words(world: tuple[Store, Settings]) -> None:
    """The shared model's version counts the words of everyone and every channel it covers,
    in the messages it trained on (their held-out newest tenth unseen), and its replies
    prefer their target's own. A version from before words were counted weighs none; a
    damaged count is a damaged version (the bot then serves the one before)."""
    store, settings = world
    with store.session() as s:
        row = active_version(s, BASE.key)
        shared = load_workspace(s, settings, settings.min_chars)
    assert row is not None
    path = version_dir(settings.data_dir, row) / WORDING
    wording = Wording.load(path)
    assert set(wording.targets) == set(shared.chars) == {"user:U1", "user:U2", "channel:C1",
                                                          "channel:C2"}
    counted = collections.Counter(w for m in shared.train for w in words(m.text))
    assert dict(zip(wording.words, wording.counts.tolist(), strict=True)) == counted
    index, uses = wording.targets["user:U1"]
    assert {wording.words[i]: n for i, n in zip(index, uses.tolist(), strict=True)} == \
        collections.Counter(w for m in shared.train if m.user == "U1" for w in words(m.text))
    loaded = load_version(settings.data_dir, row, "cpu")
    assert loaded.guard is not None and loaded.guard.wording is not None
    assert loaded.row("user:U1").own_words == "user:U1"
    # ... and how many of her training messages start with a capital, for her replies to.
    cases = [first.isupper() for m in shared.train if m.user == "U1"
             if (first := next((ch for ch in m.text if ch.isalpha()), None))]
    assert loaded.row("user:U1").capitals == (sum(cases), len(cases))
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=WORDING):
        load_version(settings.data_dir, row, "cpu")
    path.unlink()
    older = load_version(settings.data_dir, row, "cpu")
    assert older.guard is not None and older.guard.wording is None


def test_a_loaded_model_is_out_of_the_collectors_way(world: tuple[Store, Settings]) -> None:
    """What the bot loads lives as long as it serves: it is frozen out of the collector's full
    passes (which walked 240k objects in 110-180 ms, holding up every request)."""
    store, settings = world
    with store.session() as s:
        row = active_version(s, BASE.key)
        assert row is not None
        s.expunge(row)
    before = gc.get_freeze_count()
    ModelCache(settings.data_dir).get(row)
    assert gc.get_freeze_count() > before


def test_serving_edge_cases(world: tuple[Store, Settings]) -> None:
    store, settings = world
    r = Responder(settings, store, ModelCache(settings.data_dir))
    try:
        # Someone who wrote enough after the model was trained: not learned yet.
        with store.session() as s:
            s.add(User(id="U7", name="dave"))
            s.flush()
            s.add_all(Message(channel_id="C1", ts=f"1700000{i:03d}.000100", user_id="U7",
                              text_raw="hello there friends", text="hello there friends")
                      for i in range(40))
        assert "haven't learned @dave yet" in r.handle("U2", "C1", "@dave").text
        # Opted out after training: refused at once, though the vector is still in the model.
        opt_out(store, settings.data_dir, "U1")
        assert "opted out" in r.handle("U2", "C1", "@alice").text
        # A seed with characters the model never saw: kept as typed.
        reply = r.handle("U9", "C1", '@bob "ship it 🚀"')
        assert reply.public and "\n>ship it 🚀" in reply.text
    finally:
        r.close()


def test_a_damaged_model_falls_back_to_the_one_before(world: tuple[Store, Settings]) -> None:
    store, settings = world
    outcome = train(store, settings, BASE, train_overrides={**trained.QUICK, "max_steps": 20})
    with store.session() as s:  # make v2 the active one whatever its loss, then damage it
        s.execute(update(ModelVersion).where(ModelVersion.target == BASE.key)
                  .values(status="retired"))
        s.execute(update(ModelVersion).where(ModelVersion.target == BASE.key,
                                             ModelVersion.version == outcome.version)
                  .values(status="active"))
        v2 = active_version(s, BASE.key)
        (version_dir(settings.data_dir, v2) / WEIGHTS).write_bytes(b"garbage")  # type: ignore[arg-type]
    r = Responder(settings, store, ModelCache(settings.data_dir))
    try:
        reply = r.handle("U2", "C1", "@bob")
        assert reply.public and "the workspace model v1" in reply.text
    finally:
        r.close()


def test_dedicated_models_start_from_the_shared_one(world: tuple[Store, Settings]) -> None:
    store, settings = world
    with store.session() as s:
        bob = resolve(s, "@bob")
    outcome = train(store, settings, bob, train_overrides=trained.QUICK)
    assert outcome.status == "active" and "the shared model scores" in outcome.note
    with store.session() as s:
        row = active_version(s, bob.key)
        assert row is not None and row.parent_id == active_version(s, BASE.key).id  # type: ignore[union-attr]
    model, _vocab, slots = load_model(version_dir(settings.data_dir, row) / WEIGHTS)
    assert model.config.conditioned and slots.person("U2") > 0


def test_a_dedicated_model_is_served_only_if_it_beats_the_shared_one_on_the_same_messages(
        world: tuple[Store, Settings]) -> None:
    """`serving` weighs a dedicated model's held-out loss against the shared model's score for
    the person. That score was taken on a sample (SCORE_CHARS) when the shared model was
    published: training the dedicated model takes it again on all of the same messages."""
    store, settings = world
    with store.session() as s:
        bob = resolve(s, "@bob")
        shared = active_version(s, BASE.key)
        assert shared is not None
        # A score from another sample, flattering the shared model: were it kept, Bob's own
        # model could never be served.
        s.execute(update(Coverage).where(Coverage.version_id == shared.id,
                                         Coverage.target == bob.key)
                  .values(val_loss=0.0, val_loss_anyone=0.0, val_chars=1))
    train(store, settings, bob, train_overrides=trained.QUICK)
    with store.session() as s:
        corpus = load_corpus(s, settings, bob)
        cover = s.get(Coverage, (shared.id, bob.key))
        own = active_version(s, bob.key)
        chosen = serving(s, bob)
    assert cover is not None and own is not None and chosen is not None
    model, vocab, slots = load_model(version_dir(settings.data_dir, shared) / WEIGHTS)
    assert vocab is not None
    assert cover.val_chars == sum(len(m.text) + 1 for m in corpus.val_said)
    assert cover.val_loss == pytest.approx(loss_on(model, vocab, slots, bob.key,
                                                   corpus.val_said))
    assert cover.val_loss_anyone is not None and cover.val_loss_anyone > 0
    assert (chosen.row.target == bob.key) == (own.val_loss <= cover.val_loss)


def test_a_dedicated_model_is_loaded_with_the_cached_shared_one_and_writes_in_its_batch(
        world: tuple[Store, Settings]) -> None:
    """The bot's cache loads a dedicated model with the shared model it already holds (one
    copy of its net, its word guard and primer), and the sampling thread writes the dedicated
    model's replies in the shared model's batch."""
    store, settings = world
    with store.session() as s:
        bob = resolve(s, "@bob")
    train(store, settings, bob, train_overrides=trained.QUICK)
    with store.session() as s:
        own = active_version(s, bob.key)
        assert own is not None and own.parent_id is not None
        parent = s.get(ModelVersion, own.parent_id)
        s.expunge_all()
    now = [0.0]
    cache = ModelCache(settings.data_dir, idle_s=60, clock=lambda: now[0])
    dedicated = cache.get(own, parent)
    shared = cache.get(parent)  # type: ignore[arg-type]
    assert len(cache) == 2 and dedicated.reference is shared.model
    assert dedicated.primer is shared.primer and dedicated.guard is shared.guard
    # Its replies run as long as the workspace's messages, loaded with the shared model or not.
    assert not (version_dir(settings.data_dir, own) / LENGTHS).exists()
    assert dedicated.long_message == shared.long_message > 0
    assert load_version(settings.data_dir, own, "cpu", parent).long_message == \
        shared.long_message
    cache.get(own)
    cache.get(own, parent)  # its shared model is in use too: last to be evicted
    assert list(cache._models) == [own.id, parent.id]  # type: ignore[union-attr]
    now[0] = 59.0
    assert cache.get(parent) is shared and len(cache) == 2
    now[0] = 61.0  # the dedicated model has gone unasked for a minute: dropped
    assert cache.get(parent) is shared and list(cache._models) == [parent.id]  # type: ignore[union-attr]
    batcher = SampleBatcher()
    jobs = [_Job(shared, [shared.row("user:U1")] * 2), _Job(dedicated, [dedicated.row(bob.key)])]
    batches: dict[tuple[int, ...], _Batch] = {}
    assert batcher._admit(batches, jobs) == [] and len(batches) == 1
    while batches:
        batcher._advance(batches)
    assert [len(job.future.result(0)) for job in jobs] == [2, 1]


def test_own_decay_pulls_the_unseen_back_to_anyone() -> None:
    """With own_decay, a person absent from every batch drifts back towards "anyone" (their
    offset and habits shrink); without it, they stay where they were."""
    rng = random.Random(0)
    chat = [Said(str(1000 + i), "U1", "C1", rng.choice(WHISPERS)) for i in range(200)]
    vocab = Vocab.build([m.text for m in chat], min_count=1)
    slots = Slots(("U1", "U2"), ("C1",))
    sizes = {}
    for decay in (0.0, 0.5):
        torch.manual_seed(0)
        model = CharLSTM(ModelConfig(len(vocab), embed_dim=8, hidden_size=16, num_layers=1,
                                     people=3, channels=2, context_dim=4, rank=2, habits=2))
        with torch.no_grad():  # U2 (slot 2) starts away from anyone, and never writes
            model.people.weight[2].fill_(1.0)
            model.habit_out.weight[2].fill_(1.0)
        cfg = TrainConfig(batch_size=4, seq_len=16, max_seconds=0, max_steps=40,
                          eval_every_s=0, eval_every_steps=40, own_decay=decay)
        fit(model, encode(vocab, slots, chat[:180]), encode(vocab, slots, chat[180:]), cfg,
            torch.device("cpu"))
        sizes[decay] = (model.people.weight[2].abs().mean().item(),
                        model.habit_out.weight[2].abs().mean().item())
    assert sizes[0.0] == pytest.approx((1.0, 1.0))
    assert sizes[0.5][0] < 0.9 and sizes[0.5][1] < 0.9
