"""The sampler's C step (trainer/native.c): the same logits and states as the torch step for
every kind of net, built once per machine, and torch alone where no compiler builds it."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from mimic.trainer import native, sampler
from mimic.trainer.lexicon import Lexicon, WordGuard
from mimic.trainer.model import CharLSTM, ModelConfig
from mimic.trainer.sampler import Row, Voice
from mimic.trainer.vocab import Vocab

NETS = {
    # a workspace model: people, channels, adapters and habits
    "conditioned": ModelConfig(30, embed_dim=8, hidden_size=16, num_layers=2, people=4,
                               channels=3, rank=4, habits=3),
    # three layers, a width that is no multiple of the C step's 16 lanes, nothing conditioned
    # (a dedicated model)
    "plain, 3 layers": ModelConfig(27, embed_dim=6, hidden_size=20, num_layers=3),
    # one layer: no layer above to lay out an input for; context concatenated only
    "one layer": ModelConfig(25, embed_dim=5, hidden_size=12, num_layers=1, people=3,
                             channels=2),
}


def net(config: ModelConfig) -> CharLSTM:
    torch.manual_seed(0)
    model = CharLSTM(config).eval()
    with torch.no_grad():  # away from the zeros that adapters, habits and offsets start at
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("int8", [False, True])
def test_the_c_step_gives_the_torch_steps_logits_and_states(name: str, int8: bool,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    model, config = net(NETS[name]), NETS[name]
    monkeypatch.setattr(sampler, "NATIVE", True)
    fast = sampler._Stepper(model, int8=int8)
    assert fast.native is not None, "the C step was not built here (is there a C compiler?)"
    monkeypatch.setattr(sampler, "NATIVE", False)
    slow = sampler._Stepper(model, int8=int8)
    assert slow.native is None and bool(fast.packed) == bool(slow.packed) == int8
    rows = 5
    people = torch.tensor([0, 1, 2, 1, 0]) % max(1, config.people)
    channels = torch.tensor([0, 1, 0, 1, 1]) % max(1, config.channels)
    shape = (config.num_layers, rows, config.hidden_size)
    h, c = torch.randn(shape) * 0.5, torch.randn(shape) * 0.5  # each step its own copies
    states = {step: (h.clone(), c.clone()) for step in (fast, slow)}
    ids = torch.randint(config.vocab_size, (12, rows))
    with torch.inference_mode():
        contexts = {step: step.contexts(people, channels) for step in (fast, slow)}
        for t in range(12):
            got, expected = (step(ids[t], *states[step], contexts[step]) for step in (fast, slow))
            # (sums in another order: products, exp and the rest round differently)
            assert torch.allclose(got, expected, atol=2e-5, rtol=1e-5), (t, got - expected)
            for mine, theirs in zip(states[fast], states[slow], strict=True):
                assert torch.allclose(mine, theirs, atol=2e-5, rtol=1e-5)
    assert states[fast][0].abs().sum() > 0  # it stepped: h moved off the start


def test_rows_the_c_step_cannot_read_in_place_are_refused_not_read_past() -> None:
    """A row context or state that is not a contiguous float32 tensor of the batch's shape
    would be read past its end in C: it is refused with what was wrong."""
    model = net(NETS["conditioned"])
    step = sampler._Stepper(model)
    assert step.native is not None
    with torch.inference_mode():
        ctx = step.contexts(torch.tensor([1, 2]), torch.tensor([0, 1]))
        h, c = torch.zeros(2, 2, 16), torch.zeros(2, 2, 16)
        short = dict(ctx, g=ctx["g"][:1])
        with pytest.raises(ValueError, match=r"contiguous float32 \(2, 64\)"):
            step(torch.tensor([3, 4]), h, c, short)
        with pytest.raises(ValueError, match="contiguous float32"):
            step(torch.tensor([3, 4]), h, c, dict(ctx, hb=ctx["hb"].double()))
        with pytest.raises(ValueError, match=r"contiguous float32 \(2, 2, 16\)"):
            step(torch.tensor([3, 4]), h, torch.zeros(2, 1, 16), ctx)  # a state one row short


def test_it_is_built_once_and_kept_under_the_users_cache(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lib = native._load()
    assert lib is not None
    built = list((tmp_path / "mimic").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # no partial file left beside it
    inode = built[0].stat().st_ino
    month = time.time() - 31 * 86_400
    os.utime(built[0], (month, month))
    assert native._load() is not None
    assert built[0].stat().st_ino == inode  # found, not built again
    assert built[0].stat().st_mtime > month + 86_400  # and marked used
    assert lib.mimic_max_rank() >= 16


def test_a_new_build_removes_builds_unused_for_a_month_and_partial_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = tmp_path / "mimic"
    folder.mkdir()
    ages = {"sampler-0123456789abcdef.so": 31, "sampler-fedcba9876543210.so": 29,
            "sampler-tmpk3j2.so.part": 1, "notes.txt": 400}  # in days
    for name, days in ages.items():
        (folder / name).write_bytes(b"old")
        then = time.time() - days * 86_400
        os.utime(folder / name, (then, then))
    assert native._load() is not None
    left = sorted(p.name for p in folder.iterdir())
    assert len(left) == 3 and "sampler-fedcba9876543210.so" in left and "notes.txt" in left


def test_without_a_compiler_the_sampler_steps_in_torch_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with caplog.at_level(logging.INFO, logger="mimic.trainer.native"):
        assert native._load() is None
    assert "no C compiler" in caplog.text
    # A compiler that fails: told why, and nothing half-built is left to be loaded later.
    monkeypatch.setenv("CC", "false")
    with caplog.at_level(logging.WARNING, logger="mimic.trainer.native"):
        assert native._load() is None
    assert "could not be built" in caplog.text
    assert not any((tmp_path / "mimic").iterdir())
    # ... and the sampler's step is the torch one, with the same logits.
    monkeypatch.setattr(native, "_loaded", [None])
    model = net(NETS["conditioned"])
    step = sampler._Stepper(model)
    assert step.native is None
    x = torch.randint(30, (1, 3))
    with torch.inference_mode():
        expected, _ = model(x)
        h, c = torch.zeros(2, 1, 16), torch.zeros(2, 1, 16)
        for t in range(3):
            got = step(x[:, t], h, c, step.contexts(torch.tensor([0]), torch.tensor([0])))
            assert torch.allclose(got.log_softmax(-1), expected[:, t].log_softmax(-1),
                                  atol=0.05)


def test_the_c_draw_gives_the_torch_draws_odds_and_characters(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """Step by step through a batch of rows that differ in everything a draw reads (voice,
    boost, temperature, end odds, a long length, the word guard's biases): from the same
    Exp(1) noise, the C draw's odds are the torch draw's, and it draws the same characters."""
    monkeypatch.setattr(sampler, "NATIVE", True)
    vocab = Vocab(list("abcdef .A"))
    model = net(ModelConfig(len(vocab), embed_dim=8, hidden_size=16, num_layers=2, people=4,
                            channels=3, rank=4, habits=3))
    guard = WordGuard(Lexicon(["a", "ab", "abc", "bad", "cab", "dead", "face", "fade", "ace",
                               "bead", "A", "Abe"]), vocab)
    rows = [Row("a", 1.35, Voice(1, 1, (0, 1)), long_after=6, end_odds=0.05, boost=3.0),
            Row("ab ", 0.7, Voice(2, 0, (0, 0)), end_odds=0.5, boost=1.5),
            Row("ca", 1.0, Voice(3, 2, (0, 2)), end_odds=0.0, boost=0.0),
            Row("b", 1.9, Voice(1, 2, (0, 2)), long_after=3, end_odds=0.1, boost=2.0)]
    generator = torch.Generator().manual_seed(0)
    batch = sampler.Generation(model, vocab, guard=guard, generator=generator, max_len=40)
    assert batch._c is not None
    batch.add(rows)
    steps, past = 0, []
    with torch.inference_mode():
        while batch.active:
            logits, biases = batch._logits(0), batch._biases()
            start = generator.get_state()
            odds, drawn, at = batch._draw(logits, biases)
            generator.set_state(start)
            c_odds, c_drawn, c_at = batch._draw_in_c(logits, biases)
            generator.set_state(start)
            assert torch.allclose(c_odds, odds, atol=1e-6, rtol=1e-4), steps
            assert c_drawn.tolist() == drawn.tolist(), steps
            assert c_at == pytest.approx(at, rel=1e-4, abs=1e-7)
            past += [batch._state["length"][r].item() > batch._state["long"][r].item() > 0
                     for r in range(len(batch))]
            batch.step()
            steps += 1
    assert steps > 10 and sum(past) >= 2  # (and rows drawn past their long length)


def test_a_library_without_the_steps_functions_is_not_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    """A library under the expected name that lacks mimic_layer (any other build) is told and
    left alone: the sampler steps in torch."""
    other = tmp_path / "other.c"
    other.write_text("int mimic_nothing = 0;\n")
    built = tmp_path / "other.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(built), str(other)], check=True)
    monkeypatch.setattr(native, "_build", lambda compiler: built)
    with caplog.at_level(logging.WARNING, logger="mimic.trainer.native"):
        assert native._load() is None
    assert "could not be built" in caplog.text and "mimic_layer" in caplog.text
