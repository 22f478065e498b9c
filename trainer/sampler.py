"""Generate text from a CharLSTM: batched sampling, then novelty filtering and defusing."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimic.inert import make_inert
from trainer.model import CharLSTM
from trainer.novelty import WINDOW, NoveltyIndex
from trainer.vocab import Vocab

GREEDY_BELOW = 1e-3  # temperatures this small are argmax: identical, and immune to float ties


class NoNovelText(Exception):
    """Every candidate drawn quoted the training data verbatim; nothing safe to post."""


@dataclass
class DrawResult:
    texts: list[str]  # novel, inert candidates (at most n, at least 1)
    rejected: int  # candidates dropped for quoting ≥ WINDOW chars of training text
    blank: int = 0  # candidates dropped for being empty or whitespace only


class _Stepper:
    """One LSTM step for a batch, straight from the weights. nn.LSTM spends ~3 ms per
    single-character call on CPU (oneDNN setup); these few matmuls take ~0.1 ms. Layer 0's
    input projection is precomputed per vocabulary entry, so it is a row lookup."""

    def __init__(self, model: CharLSTM) -> None:
        lstm = model.lstm
        self.layers = model.config.num_layers
        w_ih0 = lstm.weight_ih_l0
        self.table = model.embed.weight @ w_ih0.T + lstm.bias_ih_l0 + lstm.bias_hh_l0
        # Transposed copies laid out contiguously: ~1.5x faster small-batch matmuls on CPU.
        self.w_hh = [getattr(lstm, f"weight_hh_l{i}").T.contiguous() for i in range(self.layers)]
        self.w_ih = [None] + [
            getattr(lstm, f"weight_ih_l{i}").T.contiguous() for i in range(1, self.layers)
        ]
        self.bias = [None] + [
            getattr(lstm, f"bias_ih_l{i}") + getattr(lstm, f"bias_hh_l{i}")
            for i in range(1, self.layers)
        ]
        self.head_w, self.head_b = model.head.weight.T.contiguous(), model.head.bias

    def __call__(self, ids: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """ids (n,) → logits (n, V); h, c (layers, n, H) are updated in place."""
        x = None
        for i in range(self.layers):
            if i == 0:
                gates = torch.addmm(self.table[ids], h[0], self.w_hh[0])
            else:
                gates = torch.addmm(self.bias[i], x, self.w_ih[i]).addmm_(h[i], self.w_hh[i])
            ig, fg, gg, og = gates.chunk(4, dim=1)  # PyTorch's gate order: i, f, g, o
            c[i] = torch.sigmoid(fg) * c[i] + torch.sigmoid(ig) * torch.tanh(gg)
            h[i] = x = torch.sigmoid(og) * torch.tanh(c[i])
        return torch.addmm(self.head_b, x, self.head_w)


def _check(temperature: float, top_k: int | None) -> None:
    if not (0 < temperature <= 2):  # also rejects NaN
        raise ValueError(f"temperature must be in (0, 2], got {temperature!r}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")


@torch.inference_mode()
def sample(
    model: CharLSTM,
    vocab: Vocab,
    *,
    n: int = 1,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed_text: str = "",
    max_len: int = 280,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    stop_at_eom: bool = True,
) -> list[str]:
    """Draw `n` messages in one batch, each starting with `seed_text`, ending at end of
    message or at `max_len` characters in all (seed included). UNK is never drawn."""
    _check(temperature, top_k)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if len(seed_text) > max_len:
        raise ValueError(f"seed_text ({len(seed_text)} chars) is longer than max_len {max_len}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        # Prime once on EOM + seed (as if a new message starts), then fan out to n lanes.
        prime = torch.tensor([[vocab.eom, *vocab.encode(seed_text)]], device=device)
        logits, (h, c) = model(prime)
        h, c = h.expand(-1, n, -1).contiguous(), c.expand(-1, n, -1).contiguous()
        logits = logits[:, -1].float().expand(n, -1)
        step = _Stepper(model)
        steps = max_len - len(seed_text)
        out = torch.full((n, steps), vocab.eom, dtype=torch.long)
        done = torch.zeros(n, dtype=torch.bool)
        draw_device = generator.device if generator is not None else device
        for t in range(steps):
            logits = logits.clone()
            logits[:, vocab.unk] = -torch.inf
            if temperature < GREEDY_BELOW:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.shape[-1]:
                    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, -torch.inf)
                probs = torch.softmax(logits, dim=-1).to(draw_device)
                nxt = torch.multinomial(probs, 1, generator=generator).to(device)
            out[:, t] = nxt[:, 0].cpu()
            if stop_at_eom:
                done |= out[:, t] == vocab.eom
                if bool(done.all()):
                    break
            logits = step(nxt[:, 0], h, c).float()
    finally:
        model.train(was_training)
    texts = []
    for row in out.tolist():
        if stop_at_eom and vocab.eom in row:
            row = row[: row.index(vocab.eom)]
        texts.append(seed_text + vocab.decode(row))
    return texts


def draw(
    model: CharLSTM,
    vocab: Vocab,
    novelty: NoveltyIndex | None,
    *,
    n: int = 1,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed_text: str = "",
    max_len: int = 280,
    tries: int = 5,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> DrawResult:
    """Sample up to `n` texts that quote no ≥ WINDOW-char span of the training data,
    redrawing for up to `tries` rounds, and make them inert for Slack. Returns fewer than
    `n` texts if that is all the rounds produced; raises NoNovelText if none survived."""
    _check(temperature, top_k)
    if novelty is not None and novelty.has_copy(seed_text, WINDOW):
        raise NoNovelText(f"the seed text itself quotes {WINDOW}+ characters of the training data")
    kept: list[str] = []
    rejected = blank = 0
    for _ in range(max(1, tries)):
        for text in sample(
            model, vocab, n=n - len(kept), temperature=temperature, top_k=top_k,
            seed_text=seed_text, max_len=max_len, generator=generator, device=device,
        ):  # fmt: skip
            if not text.strip():
                blank += 1
            elif novelty is not None and novelty.has_copy(text, WINDOW):
                rejected += 1
            else:
                kept.append(text)
        if len(kept) == n:
            break
    if not kept:
        raise NoNovelText(
            f"all {rejected + blank} candidates over {tries} tries were verbatim copies of "
            f"training text ({rejected}) or blank ({blank}); try a higher temperature"
        )
    return DrawResult([make_inert(t) for t in kept], rejected, blank)
