"""The shared workspace model's data: a Workspace as character streams, each character with its
author's and its channel's slot; scores per person and channel; and carrying a trained model
over to a new set of people and channels (the nightly warm start)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from mimic.trainer.corpus import Said, Workspace
from mimic.trainer.fit import Stream, evaluate
from mimic.trainer.model import CharLSTM, Slots
from mimic.trainer.vocab import Vocab

SCORE_CHARS = 4_000  # held-out characters scored per target when a model is published


def slots_of(workspace: Workspace) -> Slots:
    return Slots(tuple(workspace.people), tuple(workspace.channels))


def encode(vocab: Vocab, slots: Slots, messages: Sequence[Said], *, person: int | None = None,
           channel: int | None = None) -> Stream:
    """The messages as one stream (each followed by EOM), every character carrying its
    message's author and channel slot, or `person` / `channel` for all of them."""
    ids = vocab.encode_corpus(m.text for m in messages)
    lengths = np.fromiter((len(m.text) + 1 for m in messages), dtype=np.int64,
                          count=len(messages))

    def each(fixed: int | None, slot_of: object) -> np.ndarray:
        if fixed is not None:
            return np.full(len(ids), fixed, dtype=np.int64)
        per_message = np.fromiter((slot_of(m) for m in messages),  # type: ignore[operator]
                                  dtype=np.int64, count=len(messages))
        return np.repeat(per_message, lengths)

    return Stream(ids, each(person, lambda m: slots.person(m.user)),
                  each(channel, lambda m: slots.channel(m.channel)),
                  np.repeat(np.arange(len(messages), dtype=np.int64), lengths))


def target_stream(vocab: Vocab, slots: Slots, key: str, messages: Sequence[Said], *,
                  anyone: bool = False) -> Stream:
    """A person's or channel's own messages, conditioned on them (or, with `anyone`, on the
    anyone vector in their place: the gap between the two losses is what their vector
    knows)."""
    kind, ident = key.split(":", 1)
    if kind == "user":
        return encode(vocab, slots, messages, person=0 if anyone else slots.person(ident))
    return encode(vocab, slots, messages, channel=0 if anyone else slots.channel(ident))


def validation_sample(workspace: Workspace, chars: int) -> list[Said]:
    """About `chars` characters of held-out messages from across the covered targets, for
    early stopping and promotion: every k-th message, in the training stream's order."""
    held = sorted({m for messages in workspace.val.values() for m in messages},
                  key=lambda m: (m.channel, float(m.ts)))
    total = sum(len(m.text) + 1 for m in held)
    step = max(1, total // max(1, chars))
    return held[::step]


def loss_on(model: CharLSTM, vocab: Vocab, slots: Slots, key: str, messages: Sequence[Said],
            device: torch.device | str = "cpu", *, max_chars: int | None = None,
            anyone: bool = False) -> float:
    """A model's loss on a target's messages in the target's voice (or anyone's); an
    unconditioned model (an older mimic's) reads them plainly."""
    stream = (target_stream(vocab, slots, key, messages, anyone=anyone)
              if model.config.conditioned
              else Stream(vocab.encode_corpus(m.text for m in messages)))
    return evaluate(model, stream, device, max_chars=max_chars)


@torch.inference_mode()
def score(model: CharLSTM, vocab: Vocab, slots: Slots, workspace: Workspace,
          keys: Sequence[str], device: torch.device | str = "cpu",
          max_chars: int = SCORE_CHARS) -> dict[str, tuple[int, float | None, float | None]]:
    """key → (held-out characters, loss with its own vector, loss with anyone's)."""
    out = {}
    for key in keys:
        messages = workspace.val.get(key, [])
        chars = sum(len(m.text) + 1 for m in messages)
        if chars < 2:
            out[key] = (chars, None, None)
            continue
        own, anyone = (loss_on(model, vocab, slots, key, messages, device,
                               max_chars=max_chars, anyone=a) for a in (False, True))
        out[key] = (chars, own, anyone)
    return out


def carry_over(model: CharLSTM, old: Slots, new: Slots) -> CharLSTM:
    """A copy of `model` with vectors for `new`'s people and channels: those it knew keep
    theirs, newcomers start from "anyone", those gone (opted out, say) are dropped."""
    config = replace(model.config, people=len(new.people) + 1, channels=len(new.channels) + 1)
    carried = CharLSTM(config)
    tables = [("people", new.people, old.person), ("channels", new.channels, old.channel)]
    if config.habits:
        tables.append(("habit_out", new.people, old.person))
    state = {k: v for k, v in model.state_dict().items()
             if not k.startswith(tuple(f"{table}." for table, _, _ in tables))}
    carried.load_state_dict(state, strict=False)
    with torch.no_grad():
        for table, idents, slot_of in tables:
            rows = [0] + [slot_of(ident) for ident in idents]  # 0 (anyone) for newcomers
            getattr(carried, table).weight.copy_(getattr(model, table).weight[torch.tensor(rows)])
    return carried.to(next(model.parameters()).device)
