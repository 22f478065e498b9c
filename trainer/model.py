"""The char-LSTM: embedding → stacked LSTM → linear over the vocabulary, plus sizing and
checkpoint helpers. Pure: no database; files only through save_checkpoint/load_checkpoint."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
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
    # Conditioning (0 and 0: a model of one voice). Slot 0 of each table is "anyone".
    people: int = 0  # person vectors
    channels: int = 0  # channel vectors
    context_dim: int = 32  # size of each person and each channel vector
    # 0: the context is concatenated to the input only. > 0: it also makes a rank-`rank`
    # change to every layer's input weights and to the output layer (see Adapter).
    rank: int = 0
    # > 0: each person also has habits of their own at the output, a correction of the logits
    # of rank `habits` (plus a bias) read from the last layer (see CharLSTM).
    habits: int = 0

    @property
    def conditioned(self) -> bool:
        return self.people > 0 or self.channels > 0

    @property
    def context_size(self) -> int:
        """Width of the context vector: person vector then channel vector."""
        return 2 * self.context_dim if self.conditioned else 0


class Adapter(nn.Module):
    """A context-dependent low-rank change of a linear map: for input x and context c,
    (x A) * (c B), of width `rank`, is fed on as extra inputs. Together with the weights that
    read it, that is x (W + A diag(c B) R): each person and channel bends the shared weights in
    a few directions of their own (the FactorCell of Jaech & Ostendorf 2018, with its tensor
    factored, applied outside the recurrence so the fused LSTM kernels still run)."""

    def __init__(self, in_dim: int, context_size: int, rank: int) -> None:
        super().__init__()
        self.a = nn.Linear(in_dim, rank, bias=False)
        self.b = nn.Linear(context_size, rank)
        # Zero, as LoRA starts its B: the model begins as plain concatenation and the change
        # grows from there, instead of feeding every layer noise until it is learned.
        nn.init.zeros_(self.b.weight)
        nn.init.zeros_(self.b.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.a(x) * self.b(context)


class CharLSTM(nn.Module):
    """Embedding → stacked LSTM → linear over the vocabulary, optionally conditioned on who
    writes and where: a learned vector per person and per channel (Li et al. 2016's persona
    model, for characters), concatenated to the input and, with `rank`, bending every layer's
    input weights and the output layer through an Adapter."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        k, r, h = config.context_size, config.rank, config.hidden_size
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        if config.conditioned:
            # Each person's (channel's) vector is "anyone"'s plus an offset of their own that
            # starts at zero (slot 0, anyone, keeps none): someone seen in a few messages
            # stays close to anyone instead of at a random point the model never learned.
            self.anyone = nn.Parameter(torch.randn(2 * config.context_dim))
            self.people = nn.Embedding(max(1, config.people), config.context_dim, padding_idx=0)
            self.channels = nn.Embedding(max(1, config.channels), config.context_dim,
                                         padding_idx=0)
            nn.init.zeros_(self.people.weight)
            nn.init.zeros_(self.channels.weight)
        widths = [config.embed_dim + k] + [h] * (config.num_layers - 1)
        self.adapters = nn.ModuleList(
            [Adapter(w, k, r) for w in widths] if config.conditioned and r else [])
        # One nn.LSTM per layer, so that each layer's input can carry its adapter's features.
        self.layers = nn.ModuleList(
            [nn.LSTM(w + (r if self.adapters else 0), h, batch_first=True) for w in widths])
        self.head = nn.Linear(h, config.vocab_size)
        if self.adapters:
            self.head_adapter = Adapter(h, k, r)
            self.head_out = nn.Linear(r, config.vocab_size, bias=False)
        if config.conditioned and config.habits:
            # A person's habits: their own small output layer on top of the shared one, fed
            # by a shared projection of the last layer. Their vector alone (a few numbers,
            # learned through the whole network) told people apart too little to draw a
            # likeness (bench/conditioning.py); these rows learn straight from each
            # character they wrote. Zero to start, and nothing for anyone (slot 0).
            q, v = config.habits, config.vocab_size
            self.habit_in = nn.Linear(h, q, bias=False)
            self.habit_out = nn.Embedding(max(1, config.people), (q + 1) * v, padding_idx=0)
            nn.init.zeros_(self.habit_out.weight)

    def context(self, people: torch.Tensor | None, channels: torch.Tensor | None,
                like: torch.Tensor) -> torch.Tensor | None:
        """The context vectors for ids shaped like `like` (None: anyone)."""
        if not self.config.conditioned:
            return None
        zeros = torch.zeros_like(like)
        offsets = torch.cat([self.people(zeros if people is None else people),
                             self.channels(zeros if channels is None else channels)], -1)
        return offsets + self.anyone

    def habits_of(self, out: torch.Tensor, people: torch.Tensor) -> torch.Tensor:
        """The people's own corrections of the logits, for last-layer outputs `out`."""
        q, v = self.config.habits, self.config.vocab_size
        table = self.habit_out(people)  # (..., (q + 1) * v)
        weights, bias = table[..., : q * v].unflatten(-1, (q, v)), table[..., q * v :]
        return (self.habit_in(out).unsqueeze(-2) @ weights).squeeze(-2) + bias

    def forward(
        self, x: torch.Tensor, state: LSTMState | None = None,
        people: torch.Tensor | None = None, channels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, LSTMState]:
        """x, people, channels: (batch, time) ids → logits (batch, time, vocab) and the final
        (h, c), each (layers, batch, hidden). Position t's context is the person and channel
        of the character to predict there."""
        context = self.context(people, channels, x)
        out, final = self._layers(x, context, state)
        logits = self.head(out)
        if self.adapters:
            logits = logits + self.head_out(self.head_adapter(out, context))
        if self.config.habits and self.config.conditioned:
            logits = logits + self.habits_of(out, torch.zeros_like(x) if people is None
                                             else people)
        return logits, final

    def read(self, x: torch.Tensor, lengths: torch.Tensor, people: torch.Tensor | None = None,
             channels: torch.Tensor | None = None) -> LSTMState:
        """The (h, c) after reading each row of x (batch, time) from a zero state up to its
        length (the rest is padding): many rows of different lengths in one call, and no
        output layer. What a reply reads before it starts (trainer/sampler.py)."""
        return self._layers(x, self.context(people, channels, x), None, lengths)[1]

    def _layers(self, x: torch.Tensor, context: torch.Tensor | None, state: LSTMState | None,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, LSTMState]:
        out = self.embed(x)
        if context is not None:
            out = torch.cat([out, context], -1)
        states = []
        for i, lstm in enumerate(self.layers):
            if i:  # dropout between layers, as nn.LSTM applies it
                out = F.dropout(out, self.config.dropout, self.training)
            if self.adapters:
                out = torch.cat([out, self.adapters[i](out, context)], -1)
            layer_state = None if state is None else (state[0][i : i + 1], state[1][i : i + 1])
            if lengths is None:
                out, (h, c) = lstm(out, layer_state)
            else:  # packed: each row's final state is the one at its own length
                packed = nn.utils.rnn.pack_padded_sequence(out, lengths.cpu(), batch_first=True,
                                                           enforce_sorted=False)
                packed, (h, c) = lstm(packed, layer_state)
                out = nn.utils.rnn.pad_packed_sequence(packed, batch_first=True,
                                                       total_length=x.shape[1])[0]
            states.append((h, c))
        return out, (torch.cat([h for h, _ in states]), torch.cat([c for _, c in states]))


# ---------------------------------------------------------------------------------------
# Sizing


def param_count(config: ModelConfig) -> int:
    """Parameters of CharLSTM(config), computed without building it."""
    v, e, h, k, r = (config.vocab_size, config.embed_dim, config.hidden_size,
                     config.context_size, config.rank if config.conditioned else 0)
    widths = [e + k] + [h] * (config.num_layers - 1)
    lstm = sum(4 * h * (w + r + h + 2) for w in widths)
    context = ((max(1, config.people) + max(1, config.channels)) * config.context_dim + k
               if k else 0)
    adapters = sum(w * r + k * r + r for w in [*widths, h]) + r * v if r else 0
    q = config.habits if k else 0
    habits = h * q + max(1, config.people) * (q + 1) * v if q else 0
    return v * e + lstm + h * v + v + context + adapters + habits


def flops_per_char(config: ModelConfig) -> int:
    """Forward FLOPs per character (2 × multiply-adds). Training costs about 3× this
    (forward + backward through inputs + backward through weights)."""
    v, e, h, k, r = (config.vocab_size, config.embed_dim, config.hidden_size,
                     config.context_size, config.rank if config.conditioned else 0)
    widths = [e + k] + [h] * (config.num_layers - 1)
    macs = sum(4 * h * (w + r + h) for w in widths) + h * v
    if r:
        macs += sum(w * r + k * r for w in [*widths, h]) + r * v
    if config.habits and k:
        macs += h * config.habits + config.habits * v
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
    unknown = set(overrides) - {f.name for f in fields(ModelConfig)}
    if unknown:
        raise TypeError(f"unknown ModelConfig fields: {sorted(unknown)}")
    # Sizes are compared as they will be built: with the conditioning (person and channel
    # vectors, adapters) the overrides ask for, which cost parameters too.
    shape = ModelConfig(vocab_size, **{k: v for k, v in overrides.items()
                                      if k not in ("hidden_size", "num_layers", "dropout")})

    def params(hidden: int, layers: int) -> int:
        return param_count(replace(shape, hidden_size=hidden, num_layers=layers))

    cap = train_chars if max_params is None else min(train_chars, max_params)
    layers, hidden = 2, HIDDEN_CHOICES[0]
    for h in HIDDEN_CHOICES:
        if params(h, 2) <= cap:
            hidden = h
    if params(128, 2) > cap:
        layers = 1
    if params(512, 3) <= cap:
        layers, hidden = 3, 512
    config = replace(shape, hidden_size=hidden, num_layers=layers)
    ratio = train_chars / param_count(config)
    config = replace(config, dropout=0.1 if ratio >= 1 else 0.25)
    return replace(config, **overrides)


# ---------------------------------------------------------------------------------------
# Checkpoints


FORMAT = 2  # 1: one nn.LSTM for all layers ("lstm.weight_ih_l0", ...), no conditioning


@dataclass(frozen=True)
class Slots:
    """Who has a vector in a conditioned model: the Slack ids of its people and channels, in
    slot order from slot 1 (slot 0 is "anyone")."""

    people: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()

    def person(self, user_id: str) -> int:
        """The person's slot, 0 (anyone) if the model has no vector for them."""
        return self._people.get(user_id, 0)

    def channel(self, channel_id: str) -> int:
        return self._channels.get(channel_id, 0)

    @cached_property
    def _people(self) -> dict[str, int]:
        return {ident: i + 1 for i, ident in enumerate(self.people)}

    @cached_property
    def _channels(self) -> dict[str, int]:
        return {ident: i + 1 for i, ident in enumerate(self.channels)}


def save_checkpoint(
    model: CharLSTM, config: ModelConfig, path: str | Path, vocab: Vocab | None = None,
    slots: Slots | None = None,
) -> None:
    """Write weights + config (+ the vocab and slots, so the file is self-contained)
    atomically."""
    path = Path(path)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "config": asdict(config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if vocab is not None:
        payload["vocab"] = vocab.to_json()
    if slots is not None:
        payload["slots"] = {"people": list(slots.people), "channels": list(slots.channels)}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a half file under the real name


def _from_format_1(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of a format-1 checkpoint (one multi-layer nn.LSTM) as this model names them."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("lstm."):
            name, layer = key[len("lstm."):].rsplit("_l", 1)
            key = f"layers.{layer}.{name}_l0"
        out[key] = value
    return out


def load_model(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[CharLSTM, Vocab | None, Slots]:
    """Load a checkpoint as (model in eval mode, vocab if it was saved with one, slots)."""
    try:
        payload = torch.load(Path(path), map_location=device, weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {path} does not exist") from e
    except Exception as e:  # torch raises many types for truncated/garbage files
        raise CheckpointError(f"checkpoint {path} could not be read: {e}") from e
    try:
        config = ModelConfig(**payload["config"])
        model = CharLSTM(config)
        state_dict = payload["state_dict"]
        if payload.get("format", 1) == 1:
            state_dict = _from_format_1(state_dict)
        model.load_state_dict(state_dict)
        vocab = Vocab.from_json(payload["vocab"]) if "vocab" in payload else None
        saved = payload.get("slots") or {}
        slots = Slots(tuple(saved.get("people", ())), tuple(saved.get("channels", ())))
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is not a valid mimic model: {e}") from e
    if vocab is not None and len(vocab) != config.vocab_size:
        raise CheckpointError(f"checkpoint {path}: vocab size does not match the model")
    if config.conditioned and (len(slots.people) >= max(1, config.people)
                               or len(slots.channels) >= max(1, config.channels)):
        raise CheckpointError(f"checkpoint {path}: more slots than the model has vectors")
    return model.to(device).eval(), vocab, slots


def load_bundle(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[CharLSTM, Vocab | None]:
    """Load a checkpoint as (model in eval mode, vocab if it was saved with one)."""
    model, vocab, _slots = load_model(path, device)
    return model, vocab


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> CharLSTM:
    return load_bundle(path, device)[0]
