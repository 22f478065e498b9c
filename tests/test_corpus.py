"""Corpora: who may be learned from, time-ordered splits, target names."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from mimic.core.config import Settings
from mimic.core.store import Message, Store, User
from mimic.exporter.importer import import_export
from mimic.trainer.corpus import (
    BASE,
    TargetError,
    corpus_size,
    load_corpus,
    load_workspace,
    resolve,
    split_point,
    targets_with_data,
)
from tests.slack_export import write_export


@pytest.fixture
def workspace(any_store: Store, tmp_path: Path) -> Store:
    import_export(any_store, write_export(tmp_path / "export"), include_dms=True)
    return any_store


def settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)


def everything(store: Store, name: str, **kw: object) -> list[str]:
    with store.session() as s:
        corpus = load_corpus(s, settings(**kw), resolve(s, name))
    return corpus.train + corpus.val


def test_user_corpus_is_public_human_text_in_time_order(workspace: Store) -> None:
    texts = everything(workspace, "@alice")
    assert texts[0].startswith("hello @bob")
    assert "private canary zebra-42" not in texts  # private channel
    assert "just between us" not in texts  # DM
    assert "thread parent" in texts and "waves" in texts


def test_channel_corpus_and_private_channel(workspace: Store) -> None:
    general = everything(workspace, "#general")
    assert "deployed v1" not in general and "build green" not in general  # bots
    assert "a reply" in general and "a new day" in general
    with workspace.session() as s:
        secret = resolve(s, "#secret")
    assert secret.private
    assert everything(workspace, "#secret") == ["private canary zebra-42"]


def test_corpus_size_counts_what_load_corpus_gives(workspace: Store) -> None:
    with workspace.session() as s:
        for name in ("@alice", "#general", "#secret"):
            target = resolve(s, name)
            said = load_corpus(s, settings(), target).said
            assert said and corpus_size(s, settings(), target) == (
                len(said), sum(len(m.text) + 1 for m in said))


def test_the_workspace_holds_out_every_covered_targets_newest_text(workspace: Store) -> None:
    with workspace.session() as s:
        shared = load_workspace(s, settings(), 20)
        alice = load_corpus(s, settings(), resolve(s, "@alice"))
    train = {m.text for m in shared.train}
    held = {m.text for messages in shared.val.values() for m in messages}
    assert "private canary zebra-42" not in train | held  # private channels never
    assert "user:U1" in shared.chars and alice.val and not set(alice.val) & train
    assert {m.text for m in shared.val["user:U1"]} == set(alice.val)
    # Channel by channel, each in time order: conversations stay conversations.
    order = [(m.channel, float(m.ts)) for m in shared.train]
    assert order == sorted(order)
    assert shared.people[0] in ("U1", "U2") and "W3" not in shared.people  # too little text
    with workspace.session() as s, pytest.raises(ValueError, match="load_workspace"):
        load_corpus(s, settings(), BASE)


def test_opted_out_and_allowlist_are_excluded(workspace: Store) -> None:
    with workspace.session() as s:
        s.execute(update(User).where(User.name == "bob").values(opted_out=True))
    general = everything(workspace, "#general")
    assert "a reply" not in general and "hello @bob and @bob in #random and #general" in general
    assert everything(workspace, "#general", MIMIC_CHANNELS="random") == []


def test_digest_changes_with_an_edit_not_only_new_messages(workspace: Store) -> None:
    with workspace.session() as s:
        before = load_corpus(s, settings(), resolve(s, "#general")).digest
        s.execute(update(Message).where(Message.text == "waves").values(text="waves hello"))
        after = load_corpus(s, settings(), resolve(s, "#general")).digest
    assert before != after


@pytest.mark.parametrize(("lengths", "expected"), [
    ([], 0), ([5], 1), ([1, 1], 1), ([10] * 10, 9), ([1] * 100, 90), ([90, 5, 5], 1),
])
def test_split_point_takes_the_last_tenth_of_characters(lengths: list[int],
                                                        expected: int) -> None:
    assert split_point(lengths) == expected


def test_resolve_names_handles_case_and_ambiguity(workspace: Store) -> None:
    with workspace.session() as s:
        assert resolve(s, "@ALICE").key == "user:U1"
        assert resolve(s, "@ali").key == "user:U1"  # display name
        assert resolve(s, "@alice archer").key == "user:U1"  # real name
        assert resolve(s, "#General").label == "#general"
        with pytest.raises(TargetError, match="Did you mean @alice"):
            resolve(s, "@alicee")
        with pytest.raises(TargetError, match="No channel called #nope"):
            resolve(s, "#nope")
        with pytest.raises(TargetError, match="not a target"):
            resolve(s, "alice")
        s.add(User(id="U7", name="al", display_name="ali", real_name="Al Other"))
        s.flush()
        with pytest.raises(TargetError, match="could mean"):
            resolve(s, "@ali")


def test_targets_with_data_respects_the_minimum(workspace: Store) -> None:
    with workspace.session() as s:
        labels = [t.label for t in targets_with_data(s, settings(), min_chars=20)]
        assert "@alice" in labels and "#general" in labels
        assert "@deploybot" not in labels
        assert targets_with_data(s, settings(), min_chars=10_000) == []
