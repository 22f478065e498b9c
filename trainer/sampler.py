"""Generate text from a CharLSTM: batched sampling, then novelty filtering and defusing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


@dataclass(frozen=True)
class Row:
    """One message to generate: the text it starts with and its temperature."""

    seed_text: str = ""
    temperature: float = 0.8


@torch.inference_mode()
def sample_rows(
    model: CharLSTM,
    vocab: Vocab,
    rows: Sequence[Row],
    *,
    top_k: int | None = None,
    max_len: int = 280,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    stop_at_eom: bool = True,
) -> list[str]:
    """Generate one message per row in a single batch, each starting with its seed text and
    ending at end of message or at `max_len` characters in all (seed included). Rows may
    differ in seed and temperature, so concurrent requests share one batch; a row that ends
    leaves the batch, so the cost follows the messages' real lengths. UNK is never drawn."""
    if not rows:
        return []
    for row in rows:
        _check(row.temperature, top_k)
        if len(row.seed_text) > max_len:
            raise ValueError(f"seed_text ({len(row.seed_text)} chars) is longer than max_len "
                             f"{max_len}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        # Prime once per distinct seed on EOM + seed (as if a new message starts), then give
        # each row its seed's state.
        primed = {}
        for seed in dict.fromkeys(r.seed_text for r in rows):
            ids = torch.tensor([[vocab.eom, *vocab.encode(seed)]], device=device)
            logits, (h, c) = model(ids)
            primed[seed] = (logits[0, -1].float(), h[:, 0], c[:, 0])
        logits = torch.stack([primed[r.seed_text][0] for r in rows])
        h = torch.stack([primed[r.seed_text][1] for r in rows], dim=1).contiguous()
        c = torch.stack([primed[r.seed_text][2] for r in rows], dim=1).contiguous()
        temps = torch.tensor([[r.temperature] for r in rows], device=device)
        greedy = temps[:, 0] < GREEDY_BELOW
        temps = temps.clamp(min=GREEDY_BELOW)
        limits = torch.tensor([max_len - len(r.seed_text) for r in rows])
        alive = torch.arange(len(rows))  # rows still generating, in batch order
        out = torch.full((len(rows), int(limits.max())), vocab.eom, dtype=torch.long)
        step = _Stepper(model)
        draw_device = generator.device if generator is not None else device
        for t in range(out.shape[1]):
            logits[:, vocab.unk] = -torch.inf
            scaled = logits / temps
            if top_k is not None and top_k < scaled.shape[-1]:
                kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
                scaled = scaled.masked_fill(scaled < kth, -torch.inf)
            probs = torch.softmax(scaled, dim=-1).to(draw_device)
            nxt = torch.multinomial(probs, 1, generator=generator)[:, 0].to(device)
            nxt = torch.where(greedy, logits.argmax(-1), nxt)
            out[alive, t] = nxt.cpu()
            ended = limits[alive] <= t + 1
            if stop_at_eom:
                ended |= (nxt == vocab.eom).cpu()
            if bool(ended.any()):
                keep = ~ended
                alive, nxt, greedy, temps = alive[keep], nxt[keep], greedy[keep], temps[keep]
                h, c = h[:, keep.to(device)].contiguous(), c[:, keep.to(device)].contiguous()
                if not len(alive):
                    break
            logits = step(nxt, h, c).float()
    finally:
        model.train(was_training)
    texts = []
    for row, ids in zip(rows, out.tolist(), strict=True):
        ids = ids[: max_len - len(row.seed_text)]
        if stop_at_eom and vocab.eom in ids:
            ids = ids[: ids.index(vocab.eom)]
        texts.append(row.seed_text + vocab.decode(ids))
    return texts


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
    """Draw `n` messages in one batch, all from the same seed text and temperature."""
    _check(temperature, top_k)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return sample_rows(model, vocab, [Row(seed_text, temperature)] * n, top_k=top_k,
                       max_len=max_len, generator=generator, device=device,
                       stop_at_eom=stop_at_eom)


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
    sampler: Callable[[int], list[str]] | None = None,
    candidates: int | None = None,
) -> DrawResult:
    """Sample up to `n` texts that quote no ≥ WINDOW-char span of the training data,
    redrawing for up to `tries` rounds, and make them inert for Slack. Returns fewer than
    `n` texts if that is all the rounds produced; raises NoNovelText if none survived.
    Each round draws `candidates` texts (default: as many as still missing), so one round
    almost always suffices; `sampler(k)`, if given, draws the k raw texts instead (the bot's
    shared batch)."""
    _check(temperature, top_k)
    if novelty is not None and novelty.has_copy(seed_text, WINDOW):
        raise NoNovelText(f"the seed text itself quotes {WINDOW}+ characters of the training data")
    if sampler is None:
        def sampler(k: int) -> list[str]:
            return sample(model, vocab, n=k, temperature=temperature, top_k=top_k,
                          seed_text=seed_text, max_len=max_len, generator=generator,
                          device=device)
    kept: list[str] = []
    rejected = blank = 0
    for _ in range(max(1, tries)):
        for text in sampler(max(candidates or 0, n - len(kept))):
            if len(kept) == n:
                break
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
