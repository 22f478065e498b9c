"""Generate text from a CharLSTM: batched sampling, then novelty filtering and defusing."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mimic.core.inert import make_inert
from mimic.trainer.model import CharLSTM
from mimic.trainer.novelty import WINDOW, NoveltyIndex
from mimic.trainer.vocab import Vocab

if TYPE_CHECKING:
    from mimic.trainer.registry import LoadedModel

# How mimic writes; `python -m bench.drawing` compares settings (BENCHMARKS.md, "How a message
# is drawn"). The default temperature of /mimic, `mimic sample` and `mimic eval`: at 0.8, 3 % of
# generated words are words nobody in the workspace uses; at 0.6, under 2 %.
DEFAULT_TEMPERATURE = 0.6
# Read alongside the workspace model the person's was fine-tuned from, each character's log-odds
# get BOOST x (log p_person - log p_workspace) added: the person's own habits are favoured over
# what anyone might write. Style fidelity 0.73 -> 0.96 at one row a message; ranking four
# candidates afterwards had reached 0.915 with four rows and two more passes over each.
BOOST = 1.0
# ... but only among characters the person's model itself finds plausible: at least this share
# of its likeliest character's probability (else its rare slips would be boosted too).
PLAUSIBLE = 0.1
# Sharper wording runs longer (it rarely reaches the places people stop): at 0.6 and BOOST 1
# messages were 1.5 x the person's length. Doubling the end mark's odds brings them back (55
# characters against 56).
END_ODDS = 2.0
GREEDY_BELOW = 1e-3  # temperatures this small are argmax: identical, and immune to float ties


class NoNovelText(Exception):
    """Every message drawn quoted the training data verbatim; nothing safe to post."""


@dataclass
class DrawResult:
    texts: list[str]  # novel, inert messages (at most n, at least 1)
    rejected: int  # drawn and dropped for quoting ≥ WINDOW chars of training text
    blank: int = 0  # drawn and dropped for being empty or whitespace only


class _Stepper:
    """One LSTM step for a batch, straight from the weights. nn.LSTM spends ~3 ms per
    single-character call on CPU (oneDNN setup); these few matmuls take ~0.1 ms. Layer 0's
    input projection is precomputed per vocabulary entry, so it is a row lookup."""

    def __init__(self, model: CharLSTM) -> None:
        lstm = model.lstm
        self.layers, self.hidden = model.config.num_layers, model.config.hidden_size
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
            # PyTorch's gate order is i, f, g, o: one sigmoid over all four (g's quarter is
            # wasted) costs less than three calls at these sizes.
            ig, fg, _, og = torch.sigmoid(gates).chunk(4, dim=1)
            gg = torch.tanh(gates[:, 2 * self.hidden : 3 * self.hidden])
            c[i] = (fg * c[i]).addcmul_(ig, gg)
            h[i] = x = og * torch.tanh(c[i])
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
    temperature: float = DEFAULT_TEMPERATURE


def _dim(key: str) -> int:
    """The batch dimension of a Generation state entry: 1 for LSTM states (layers, n, H)."""
    return 1 if key[0] in "hc" else 0


class Generation:
    """Messages being generated together, one character a step. Rows may join between steps
    (the bot adds requests that arrive while others are being written: continuous batching)
    and leave the batch when they end, so the cost follows the messages' real lengths.

    Each row starts from its seed text (primed on EOM + seed, as if a new message starts)
    and ends at end of message or at `max_len` characters in all, seed included. UNK is
    never drawn. With a `reference` (the workspace model `model` was fine-tuned from), the
    reference reads along and every character is drawn contrasted with it (see BOOST).
    """

    def __init__(self, model: CharLSTM, vocab: Vocab, *, reference: CharLSTM | None = None,
                 top_k: int | None = None, max_len: int = 280,
                 generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu", stop_at_eom: bool = True,
                 boost: float = BOOST, end_odds: float = END_ODDS) -> None:
        self.model, self.vocab, self.top_k, self.max_len = model, vocab, top_k, max_len
        self.boost, self.end_odds = boost, end_odds  # others only to compare (bench/drawing.py)
        self.generator, self.device = generator, torch.device(device)
        self.stop_at_eom = stop_at_eom
        self._draw_device = generator.device if generator is not None else self.device
        self._nets = [model] + ([] if reference is None else [reference])
        self._steps = [_Stepper(net) for net in self._nets]
        self._unk, self._eom = (torch.tensor([i], device=self.device)
                                for i in (vocab.unk, vocab.eom))
        self._alive: list[int] = []  # row ids in batch order
        # Batch-aligned: logits<m>, h<m>, c<m> for net m (0 the model, 1 the reference),
        # temps and greedy.
        self._state: dict[str, torch.Tensor] = {}
        self._rows: dict[int, tuple[Row, list[int]]] = {}  # id → (row, ids drawn so far)
        self._done: dict[int, str] = {}
        self._next = 0

    @property
    def active(self) -> bool:
        return bool(self._alive)

    def __len__(self) -> int:
        """Rows still being written."""
        return len(self._alive)

    @torch.inference_mode()
    def add(self, rows: Sequence[Row]) -> list[int]:
        """Start generating `rows`; returns their ids for `take`."""
        for row in rows:
            _check(row.temperature, self.top_k)
            if len(row.seed_text) > self.max_len:
                raise ValueError(f"seed_text ({len(row.seed_text)} chars) is longer than "
                                 f"max_len {self.max_len}")
        if not rows:
            return []
        primed: dict[str, dict[str, torch.Tensor]] = {}
        for seed in dict.fromkeys(r.seed_text for r in rows):
            # Step by step, not nn.LSTM: its ~3 ms per call was a third of the bot's sampling
            # thread when twenty requests came at once (seeds are short, most are empty).
            ids = torch.tensor([self.vocab.eom, *self.vocab.encode(seed)], device=self.device)
            primed[seed] = {}
            for m, (net, step) in enumerate(zip(self._nets, self._steps, strict=True)):
                size = (net.config.num_layers, 1, net.config.hidden_size)
                h, c = (torch.zeros(size, device=self.device) for _ in "hc")
                for i in range(len(ids)):
                    logits = step(ids[i : i + 1], h, c)
                primed[seed] |= {f"logits{m}": logits[0].float(), f"h{m}": h[:, 0],
                                 f"c{m}": c[:, 0]}
        temps = torch.tensor([r.temperature for r in rows], device=self.device)
        new = {key: torch.stack([primed[r.seed_text][key] for r in rows], dim=_dim(key))
               for key in primed[rows[0].seed_text]}
        new |= {"greedy": temps < GREEDY_BELOW, "temps": temps.clamp(min=GREEDY_BELOW)[:, None]}
        for key, value in new.items():
            old = self._state.get(key)
            self._state[key] = (value if old is None else torch.cat([old, value], _dim(key))
                                ).contiguous()
        ids = list(range(self._next, self._next + len(rows)))
        self._next += len(rows)
        self._alive += ids
        for i, row in zip(ids, rows, strict=True):
            self._rows[i] = (row, [])
            if len(row.seed_text) == self.max_len:  # nothing left to write
                self._finish(i)
        self._compact()
        return ids

    @torch.inference_mode()
    def step(self) -> None:
        """Draw one character for every row still going."""
        st = self._state
        eom = self.vocab.eom
        logp = st["logits0"].index_fill(1, self._unk, -torch.inf).log_softmax(-1)
        # Temperature shapes the wording, not the length: whether the message ends here is
        # drawn at the model's own odds (x END_ODDS). Tempering the end mark too made
        # messages at 0.6 2.5x as long as the person's (it is rarely the likeliest symbol).
        p_end = logp[:, eom : eom + 1].exp()
        end = p_end * self.end_odds / (1 + p_end * (self.end_odds - 1))
        words = logp.index_fill(1, self._eom, -torch.inf)
        if len(self._nets) > 1 and self.boost:
            contrast = logp - st["logits1"].log_softmax(-1)
            likeliest = words.max(-1, keepdim=True).values
            words = torch.where(words >= likeliest + math.log(PLAUSIBLE),
                                words + self.boost * contrast, -torch.inf)
        scaled = words / st["temps"]
        if self.top_k is not None and self.top_k < scaled.shape[-1]:
            kth = torch.topk(scaled, self.top_k, dim=-1).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, -torch.inf)
        probs = torch.softmax(scaled, dim=-1) * (1 - end)
        probs[:, eom] = end[:, 0]
        nxt = torch.multinomial(probs.to(self._draw_device), 1,
                                generator=self.generator)[:, 0].to(self.device)
        nxt = torch.where(st["greedy"], probs.argmax(-1), nxt)
        for i, token in zip(self._alive, nxt.tolist(), strict=True):
            row, drawn = self._rows[i]
            drawn.append(token)
            if (self.stop_at_eom and token == self.vocab.eom) or \
                    len(row.seed_text) + len(drawn) >= self.max_len:
                self._finish(i)
        kept = self._compact()
        if kept is not None:
            nxt = nxt.index_select(0, kept)
        if self._alive:
            st = self._state  # compaction made a new one
            for m, step in enumerate(self._steps):
                st[f"logits{m}"] = step(nxt, st[f"h{m}"], st[f"c{m}"]).float()

    def take(self, ids: Sequence[int]) -> list[str] | None:
        """The finished texts of `ids` (forgotten here), or None while any is still going."""
        if any(i not in self._done for i in ids):
            return None
        return [self._done.pop(i) for i in ids]

    def _finish(self, i: int) -> None:
        row, drawn = self._rows.pop(i)
        if self.stop_at_eom and self.vocab.eom in drawn:
            drawn = drawn[: drawn.index(self.vocab.eom)]
        self._done[i] = row.seed_text + self.vocab.decode(drawn)

    def _compact(self) -> torch.Tensor | None:
        """Drop finished rows from the batch; returns the batch positions kept, if any went."""
        keep = [k for k, i in enumerate(self._alive) if i in self._rows]
        if len(keep) == len(self._alive):
            return None
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self._state = {key: value.index_select(_dim(key), index)
                       for key, value in self._state.items()}
        self._alive = [self._alive[k] for k in keep]
        return index


def sample_rows(
    model: CharLSTM,
    vocab: Vocab,
    rows: Sequence[Row],
    *,
    reference: CharLSTM | None = None,
    top_k: int | None = None,
    max_len: int = 280,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    stop_at_eom: bool = True,
) -> list[str]:
    """One message per row, generated in a single batch (see Generation)."""
    if not rows:
        return []
    nets = [net for net in (model, reference) if net is not None]
    modes = [net.training for net in nets]
    for net in nets:
        net.eval()
    try:
        batch = Generation(model, vocab, reference=reference, top_k=top_k, max_len=max_len,
                           generator=generator, device=device, stop_at_eom=stop_at_eom)
        ids = batch.add(rows)
        while batch.active:
            batch.step()
    finally:
        for net, mode in zip(nets, modes, strict=True):
            net.train(mode)
    texts = batch.take(ids)
    assert texts is not None
    return texts


def sample(
    model: CharLSTM,
    vocab: Vocab,
    *,
    n: int = 1,
    reference: CharLSTM | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
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
    return sample_rows(model, vocab, [Row(seed_text, temperature)] * n, reference=reference,
                       top_k=top_k, max_len=max_len, generator=generator, device=device,
                       stop_at_eom=stop_at_eom)


def draw(
    model: CharLSTM,
    vocab: Vocab,
    novelty: NoveltyIndex | None,
    *,
    n: int = 1,
    reference: CharLSTM | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    top_k: int | None = None,
    seed_text: str = "",
    max_len: int = 280,
    tries: int = 5,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    sampler: Callable[[int], list[str]] | None = None,
) -> DrawResult:
    """Up to `n` messages: blanks and those quoting a ≥ WINDOW-char span of the training data
    are refused and drawn again, for up to `tries` rounds. The texts come back inert for
    Slack; fewer than `n` if that is all the rounds produced, NoNovelText if none survived.
    `sampler(k)`, if given, draws the k raw texts instead (the bot's shared batch)."""
    _check(temperature, top_k)
    if novelty is not None and novelty.has_copy(seed_text, WINDOW):
        raise NoNovelText(f"the seed text itself quotes {WINDOW}+ characters of the training data")
    if sampler is None:
        def sampler(k: int) -> list[str]:
            return sample(model, vocab, n=k, reference=reference, temperature=temperature,
                          top_k=top_k, seed_text=seed_text, max_len=max_len,
                          generator=generator, device=device)
    chosen: list[str] = []
    rejected = blank = 0
    for _ in range(max(1, tries)):
        for text in sampler(n - len(chosen)):
            if not text.strip():
                blank += 1
            elif novelty is not None and novelty.has_copy(text, WINDOW):
                rejected += 1
            else:
                chosen.append(text)
        if len(chosen) == n:
            break
    if not chosen:
        raise NoNovelText(
            f"all {rejected + blank} messages drawn over {tries} tries were verbatim copies of "
            f"training text ({rejected}) or blank ({blank}); try a higher temperature"
        )
    return DrawResult([make_inert(t) for t in chosen], rejected, blank)


def reply(loaded: LoadedModel, *, n: int = 1, temperature: float = DEFAULT_TEMPERATURE,
          seed_text: str = "", top_k: int | None = None,
          generator: torch.Generator | None = None, device: torch.device | str = "cpu",
          sampler: Callable[[int], list[str]] | None = None) -> DrawResult:
    """`n` messages the way mimic serves them, from a published version: contrasted with the
    base it was fine-tuned from (see BOOST); `sampler(k)` replaces the drawing done here (the
    bot's shared batch, which does the same)."""
    return draw(loaded.model, loaded.vocab, loaded.novelty, n=n, reference=loaded.reference,
                temperature=temperature, top_k=top_k, seed_text=seed_text,
                generator=generator, device=device, sampler=sampler)
