"""Privacy by construction: private-channel canaries and an opted-out person's words never
come out of a model usable in a public channel; consent mode opt-in asks people first."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from mimic.bot.models import ModelCache
from mimic.bot.replies import Responder
from mimic.core.store import Coverage, ModelVersion, Store, make_engine, upgrade
from mimic.exporter.importer import import_export
from mimic.trainer.corpus import BASE, load_corpus, load_workspace, resolve, targets_with_data
from mimic.trainer.model import load_model
from mimic.trainer.privacy import opt_in, opt_out
from mimic.trainer.registry import WEIGHTS, WORDING, version_dir
from mimic.trainer.sampler import Voice, sample
from mimic.trainer.train import train
from mimic.trainer.wording import Wording
from tests import trained, workspace


@pytest.fixture(scope="module")
def forgotten_bob(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, object]:
    """Bob opts out before training; the workspace model and the private channel's own are
    then trained (tiny), with a dedicated model for alice too."""
    root = tmp_path_factory.mktemp("privacy")
    settings = trained.settings_for(root)
    upgrade(make_engine(settings.database_url))
    store = Store(make_engine(settings.database_url))
    import_export(store, workspace.build(root / "export"))
    opt_out(store, settings.data_dir, "U2")
    train(store, settings, BASE, model_overrides=trained.TINY_MODEL,
          train_overrides=trained.QUICK)
    with store.session() as s:
        for name in ("#secret", "@alice"):
            train(store, settings, resolve(s, name), train_overrides=trained.QUICK)
    return store, settings


def test_no_canary_and_no_opted_out_words_in_public_models(forgotten_bob: tuple) -> None:
    store, settings = forgotten_bob
    with store.session() as s:
        rows = s.scalars(select(ModelVersion).where(ModelVersion.status == "active")).all()
        covered = set(s.scalars(select(Coverage.target)))
        for row in rows:
            s.expunge(row)
    public = [r for r in rows if r.target != "channel:G1"]
    assert {r.target for r in public} == {"base", "user:U1"}
    assert covered == {"user:U1", "channel:C1"}  # bob and his #random are not in it

    texts: list[str] = []
    for row in public:  # in every voice the models have, anyone's included
        model, vocab, slots = load_model(version_dir(settings.data_dir, row) / WEIGHTS)
        for person in range(model.config.people):
            for channel in range(model.config.channels):
                for temperature in (0.5, 1.0, 1.5):
                    texts += sample(model, vocab, n=10, temperature=temperature,
                                    voice=Voice(person, channel),
                                    generator=torch.Generator().manual_seed(7))
        assert "U2" not in slots.people and "G1" not in slots.channels
    blob = "\n".join(texts).lower()
    assert "canary" not in blob and "private-xq" not in blob
    for line in workspace.BOB:
        assert line not in blob
    assert not any(word in blob for word in ("boat", "tide", "sailed"))


def test_the_word_counts_hold_no_private_or_opted_out_words(forgotten_bob: tuple) -> None:
    """What replies prefer (each target's own words) is counted from the shared model's
    messages alone: nobody opted out, no private channel, none of their words."""
    store, settings = forgotten_bob
    with store.session() as s:
        row = s.scalars(select(ModelVersion).where(ModelVersion.target == BASE.key,
                                                   ModelVersion.status == "active")).one()
        folder = version_dir(settings.data_dir, row)
    wording = Wording.load(folder / WORDING)
    assert set(wording.targets) == {"user:U1", "channel:C1"}
    assert not {"canary", "boat", "tide", "sailed"} & set(wording.words)


def test_the_corpora_themselves_exclude_them(forgotten_bob: tuple) -> None:
    store, settings = forgotten_bob
    with store.session() as s:
        shared = load_workspace(s, settings, settings.min_chars)
        text = "\n".join([m.text for m in shared.train]
                         + [m.text for v in shared.val.values() for m in v])
        assert "canary" not in text and "boat" not in text
        for target in [resolve(s, "@alice"), resolve(s, "#general")]:
            corpus = load_corpus(s, settings, target)
            text = "\n".join(corpus.train + corpus.val)
            assert "canary" not in text and "boat" not in text
        secret = load_corpus(s, settings, resolve(s, "#secret"))
        assert all("canary" in m for m in secret.train + secret.val)


def test_the_private_model_is_kept_apart(forgotten_bob: tuple) -> None:
    store, settings = forgotten_bob
    with store.session() as s:
        secret = resolve(s, "#secret")
        row = s.scalars(select(ModelVersion).where(ModelVersion.target == secret.key)).one()
        folder = version_dir(settings.data_dir, row)
    assert folder.is_dir()
    r = Responder(settings, store, ModelCache(settings.data_dir))
    try:
        assert r.handle("U1", "G1", "#secret").public
        assert r.handle("U1", "C1", "#secret").text.startswith("No channel called #secret.")
    finally:
        r.close()


def test_consent_opt_in_refuses_everyone_until_they_opt_in(tmp_path: Path) -> None:
    template = tmp_path / "template"
    template.mkdir()
    trained.build(template)
    store, settings = trained.copy(template, tmp_path, MIMIC_CONSENT="opt-in")
    r = Responder(settings, store, ModelCache(settings.data_dir))
    try:
        refused = r.handle("U2", "C1", "@alice")
        assert not refused.public and "hasn't opted in" in refused.text
        assert "alice" not in r.handle("U2", "C1", "list").text
        with store.session() as s:
            assert load_corpus(s, settings, resolve(s, "@alice")).train == []
            assert targets_with_data(s, settings, 1) == []
        opt_in(store, "U1")
        assert r.handle("U2", "C1", "@alice").public
        with store.session() as s:
            assert load_corpus(s, settings, resolve(s, "@alice")).train
    finally:
        r.close()
