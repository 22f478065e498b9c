"""The char-LSTM: embedding → stacked LSTM → linear over the vocabulary, plus sizing and
checkpoint helpers. Pure: no database; files only through save_checkpoint/load_checkpoint."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mimic.trainer.vocab import Vocab

LSTMState = tuple[torch.Tensor, torch.Tensor]


class CheckpointError(Exception):
    """A checkpoint file is missing, truncated, corrupt or does not match its config."""


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    embed_dim: int = 64
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.1


class CharLSTM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.lstm = nn.LSTM(
            config.embed_dim,
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(
        self, x: torch.Tensor, state: LSTMState | None = None
    ) -> tuple[torch.Tensor, LSTMState]:
        """x: (batch, time) ids → logits (batch, time, vocab) and the final (h, c)."""
        # Dropout only between LSTM layers: an extra mask on the output cost ~3% of a CPU
        # step (bernoulli is slow) for no measurable gain.
        out, state = self.lstm(self.embed(x), state)
        return self.head(out), state


# ---------------------------------------------------------------------------------------
# Sizing


def param_count(config: ModelConfig) -> int:
    """Parameters of CharLSTM(config), computed without building it."""
    v, e, h = config.vocab_size, config.embed_dim, config.hidden_size
    lstm = sum(4 * h * ((e if i == 0 else h) + h + 2) for i in range(config.num_layers))
    return v * e + lstm + h * v + v


def flops_per_char(config: ModelConfig) -> int:
    """Forward FLOPs per character (2 × multiply-adds). Training costs about 3× this
    (forward + backward through inputs + backward through weights)."""
    e, h, v = config.embed_dim, config.hidden_size, config.vocab_size
    macs = sum(4 * h * ((e if i == 0 else h) + h) for i in range(config.num_layers)) + h * v
    return 2 * macs


HIDDEN_CHOICES = (128, 192, 256, 320, 384, 448, 512)


def size_for(train_chars: int, vocab_size: int, max_params: int | None = None,
             **overrides: Any) -> ModelConfig:
    """Pick a model size for a corpus of `train_chars` characters.

    char-rnn's rule of thumb (Karpathy): the parameter count should be of the same order as
    the number of training characters — much more and the net memorises, much less and it
    underfits. We take the largest 2-layer net (hidden 128..512 in steps of 64) whose
    parameters do not exceed the training characters, 3 layers × 512 only past ~5M chars
    (where 2×512's 3.4M parameters are already below the data), and 1 × 128 for corpora too
    small for even 2 × 128 (~250k parameters). Dropout is 0.1 (the time budget allows only
    a few epochs, so regularising harder slows learning more than it saves), 0.25 only for
    the 1 × 128 fallback, which can outnumber its data. `max_params` caps the size further
    (what a time budget can train, see trainer/train.py). Any field can be overridden.
    """
    cap = train_chars if max_params is None else min(train_chars, max_params)
    layers, hidden = 2, HIDDEN_CHOICES[0]
    for h in HIDDEN_CHOICES:
        if param_count(ModelConfig(vocab_size, hidden_size=h, num_layers=2)) <= cap:
            hidden = h
    if param_count(ModelConfig(vocab_size, hidden_size=128, num_layers=2)) > cap:
        layers = 1
    if param_count(ModelConfig(vocab_size, hidden_size=512, num_layers=3)) <= cap:
        layers, hidden = 3, 512
    config = ModelConfig(vocab_size, hidden_size=hidden, num_layers=layers)
    ratio = train_chars / param_count(config)
    config = replace(config, dropout=0.1 if ratio >= 1 else 0.25)
    unknown = set(overrides) - {f.name for f in fields(ModelConfig)}
    if unknown:
        raise TypeError(f"unknown ModelConfig fields: {sorted(unknown)}")
    return replace(config, **overrides)


# ---------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(
    model: CharLSTM, config: ModelConfig, path: str | Path, vocab: Vocab | None = None
) -> None:
    """Write weights + config (+ the vocab, so the file is self-contained) atomically."""
    path = Path(path)
    payload: dict[str, Any] = {
        "format": 1,
        "config": asdict(config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if vocab is not None:
        payload["vocab"] = vocab.to_json()
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a half file under the real name


def load_bundle(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[CharLSTM, Vocab | None]:
    """Load a checkpoint as (model in eval mode, vocab if it was saved with one)."""
    try:
        payload = torch.load(Path(path), map_location=device, weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {path} does not exist") from e
    except Exception as e:  # torch raises many types for truncated/garbage files
        raise CheckpointError(f"checkpoint {path} could not be read: {e}") from e
    try:
        config = ModelConfig(**payload["config"])
        model = CharLSTM(config)
        model.load_state_dict(payload["state_dict"])
        vocab = Vocab.from_json(payload["vocab"]) if "vocab" in payload else None
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is not a valid mimic model: {e}") from e
    if vocab is not None and len(vocab) != config.vocab_size:
        raise CheckpointError(f"checkpoint {path}: vocab size does not match the model")
    return model.to(device).eval(), vocab


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> CharLSTM:
    return load_bundle(path, device)[0]
