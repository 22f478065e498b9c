"""Vocab, model, checkpoints and training on tiny data (each test takes a few seconds)."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mimic.trainer.device import pick_device
from mimic.trainer.fit import (
    BFLOAT16_GAIN,
    FitResult,
    TrainConfig,
    _set_threads,
    _speeds,
    cores,
    evaluate,
    fit,
    throughput,
    training_precision,
)
from mimic.trainer.model import (
    CharLSTM,
    CheckpointError,
    ModelConfig,
    flops_per_char,
    load_bundle,
    load_checkpoint,
    param_count,
    save_checkpoint,
    size_for,
)
from mimic.trainer.vocab import Vocab

MESSAGES = ["the cat sat on the mat", "a dog ate my hat", "the cat ate the rat"] * 60


def tiny(vocab: Vocab, hidden: int = 48) -> CharLSTM:
    torch.manual_seed(0)
    return CharLSTM(ModelConfig(len(vocab), embed_dim=16, hidden_size=hidden, num_layers=1))


def test_vocab_round_trip_and_specials() -> None:
    vocab = Vocab.build(["abcab", "ba", "zz"], min_count=2)
    assert vocab.chars == ["a", "b", "z"]
    assert (vocab.eom, vocab.unk, len(vocab)) == (0, 1, 5)
    assert vocab.encode("abq") == [2, 3, vocab.unk]
    ids = vocab.encode_corpus(["ab", "z"])
    assert ids.tolist() == [2, 3, 0, 4, 0] and ids.dtype == np.int64
    assert vocab.decode(vocab.encode("ab")) == "ab"
    assert Vocab.from_json(vocab.to_json()) == vocab
    assert Vocab.build(["zzbbaa"] * 5) == Vocab.build(["aabbzz"] * 5)  # order-free


def test_size_for_follows_data_and_overrides() -> None:
    small, mid, big = (size_for(n, 100) for n in (100_000, 1_100_000, 50_000_000))
    assert (small.num_layers, small.hidden_size) == (1, 128)
    assert (mid.num_layers, mid.hidden_size) == (2, 256)
    assert (big.num_layers, big.hidden_size) == (3, 512)
    assert param_count(mid) <= 1_100_000
    assert param_count(mid) == sum(p.numel() for p in CharLSTM(mid).parameters())
    assert size_for(1_100_000, 100, hidden_size=64).hidden_size == 64
    assert flops_per_char(mid) > 2 * 4 * 256 * 512
    with pytest.raises(TypeError):
        size_for(1000, 10, hidden=3)


def test_tiny_model_learns_repetitive_corpus() -> None:
    vocab = Vocab.build(MESSAGES, min_count=1)
    ids = vocab.encode_corpus(MESSAGES)
    model = tiny(vocab)
    before = evaluate(model, ids[-400:])
    cfg = TrainConfig(
        batch_size=8,
        seq_len=32,
        lr=1e-2,
        max_seconds=0,
        max_steps=150,
        warmup_steps=5,
        eval_every_s=0,
        eval_every_steps=50,
    )
    result = fit(model, ids[:-400], ids[-400:], cfg, torch.device("cpu"))
    assert isinstance(result, FitResult)
    assert result.stopped_reason == "max_steps" and result.steps == 150
    assert result.best_val_loss < 0.5 * math.log(len(vocab)) < before
    assert [row["step"] for row in result.history] == [50, 100, 150]
    assert all(v.device.type == "cpu" for v in result.best_state_dict.values())
    # fit leaves the best weights in the model, and evaluate agrees with fit's number.
    assert evaluate(model, ids[-400:], max_chars=cfg.val_max_chars) == pytest.approx(
        result.best_val_loss, rel=1e-5
    )


def test_bfloat16_steps_learn_on_float32_weights_and_validate_in_float32() -> None:
    vocab = Vocab.build(MESSAGES, min_count=1)
    ids = vocab.encode_corpus(MESSAGES)
    cfg = TrainConfig(batch_size=8, seq_len=32, lr=1e-2, max_seconds=0, max_steps=100,
                      warmup_steps=5, eval_every_s=0, eval_every_steps=50, precision="float32")
    results = {}
    for precision in ("float32", "bfloat16"):
        model = tiny(vocab)
        results[precision] = fit(model, ids[:-400], ids[-400:],
                                 replace(cfg, precision=precision), torch.device("cpu"))
        assert results[precision].precision == precision
        assert all(p.dtype == torch.float32 for p in model.parameters())
        # The validation fit reported is float32's: evaluate (float32 on CPU) agrees.
        assert evaluate(model, ids[-400:]) == pytest.approx(results[precision].best_val_loss,
                                                           rel=1e-5)
    ours, theirs = results["bfloat16"], results["float32"]
    assert ours.best_val_loss < 0.5 * math.log(len(vocab))
    # The same first weights and lanes: the steps differ only by their arithmetic, so the
    # losses are close but not equal (they would be, had the steps not run in bfloat16).
    assert ours.best_val_loss == pytest.approx(theirs.best_val_loss, rel=0.1)
    assert [r["train_loss"] for r in ours.history] != [r["train_loss"] for r in theirs.history]


def test_auto_precision_is_a_measured_choice_between_the_two() -> None:
    vocab = Vocab.build(MESSAGES, min_count=1)
    model = tiny(vocab)
    cfg = TrainConfig(batch_size=8, seq_len=32)
    chosen = training_precision(model, cfg, torch.device("cpu"))
    fp32, bf16 = _speeds(model, cfg, torch.device("cpu"))  # measured once, then kept
    assert fp32 > 0 and bf16 >= 0
    assert chosen == ("bfloat16" if bf16 >= BFLOAT16_GAIN * fp32 else "float32")
    # Sizing reads the speed training will have.
    assert throughput(model, cfg, torch.device("cpu")) == (bf16 if chosen == "bfloat16"
                                                           else fp32)
    for forced in ("float32", "bfloat16"):
        assert training_precision(model, replace(cfg, precision=forced),
                                  torch.device("cpu")) == forced


def test_keyboard_interrupt_returns_best_so_far() -> None:
    vocab = Vocab.build(MESSAGES, min_count=1)
    ids = vocab.encode_corpus(MESSAGES)
    calls = []

    def on_progress(row: dict) -> None:
        calls.append(row)
        if len(calls) == 2:
            raise KeyboardInterrupt

    cfg = TrainConfig(
        batch_size=4,
        seq_len=16,
        max_seconds=0,
        max_steps=1000,
        eval_every_s=0,
        eval_every_steps=5,
        progress_every_s=1e9,
    )
    result = fit(tiny(vocab), ids[:-200], ids[-200:], cfg, torch.device("cpu"), on_progress)
    assert result.stopped_reason == "interrupted"
    assert result.steps == 10 and len(result.history) == 2
    assert result.best_state_dict and math.isfinite(result.best_val_loss)
    assert result.best_val_loss == min(row["val_loss"] for row in result.history)


def test_early_stop_and_short_streams() -> None:
    vocab = Vocab.build(MESSAGES, min_count=1)
    ids = vocab.encode_corpus(MESSAGES)
    # lr 0 can never improve, so patience runs out; a 20-char stream still trains.
    cfg = TrainConfig(
        lr=0.0, max_seconds=0, max_steps=100, eval_every_s=0, eval_every_steps=1, patience=3
    )
    result = fit(tiny(vocab), ids[:20], ids[-100:], cfg, torch.device("cpu"))
    assert result.stopped_reason == "early_stop" and result.steps == 4


def test_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    vocab = Vocab.build(MESSAGES, min_count=1)
    model = tiny(vocab).eval()
    x = torch.tensor([vocab.encode("the cat")])
    path = tmp_path / "m.pt"
    save_checkpoint(model, model.config, path, vocab)
    loaded, loaded_vocab = load_bundle(path)
    assert loaded_vocab == vocab and loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])
    save_checkpoint(model, model.config, path)  # without vocab
    assert load_bundle(path)[1] is None and not load_checkpoint(path).training


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None, "truncated"])
def test_bad_checkpoint_raises_checkpoint_error(
    tmp_path: Path, content: bytes | str | None
) -> None:
    path = tmp_path / "bad.pt"
    if content == "truncated":
        vocab = Vocab.build(MESSAGES, min_count=1)
        save_checkpoint(tiny(vocab), tiny(vocab).config, path)
        path.write_bytes(path.read_bytes()[:500])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_checkpoint_with_wrong_shapes_raises(tmp_path: Path) -> None:
    vocab = Vocab.build(MESSAGES, min_count=1)
    path = tmp_path / "m.pt"
    save_checkpoint(tiny(vocab), ModelConfig(len(vocab), 16, 64, 1), path)  # config lies
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_pick_device() -> None:
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device("cuda")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_training_threads_follow_the_cores_the_process_may_use() -> None:
    """Under `taskset -c 1` or a container's cpuset the machine still counts all its CPUs: the
    trainer starts as many threads as the process may run on, not two on one core."""
    allowed, threads = os.sched_getaffinity(0), torch.get_num_threads()
    try:
        os.sched_setaffinity(0, {min(allowed)})
        assert cores() == 1
        _set_threads(torch.device("cpu"), 0)
        assert torch.get_num_threads() == 1
        _set_threads(torch.device("cpu"), 3)  # asked for: as asked
        assert torch.get_num_threads() == 3
    finally:
        os.sched_setaffinity(0, allowed)
        torch.set_num_threads(threads)
    assert cores() == len(allowed)
