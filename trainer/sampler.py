"""Generate text from a CharLSTM: batched sampling, then novelty filtering and defusing."""

from __future__ import annotations

import math
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import torch

from mimic.core.inert import make_inert
from mimic.trainer import native
from mimic.trainer.model import CharLSTM
from mimic.trainer.novelty import WINDOW, NoveltyIndex
from mimic.trainer.vocab import Vocab
from mimic.trainer.wording import by_words

if TYPE_CHECKING:
    from mimic.trainer.registry import LoadedModel

# How mimic writes; `python -m bench.drawing` compares settings (BENCHMARKS.md, "How a message
# is drawn"; chitchat's 10 biggest senders, 2,000 messages a setting).
# Each character's log-odds get BOOST x (log p_person - log p_anyone) added, both rows of the
# same shared model: what marks the person out is favoured over what anyone might write.
# Style fidelity 0.58 (0) -> 0.82 (2) -> 0.85 (3) at temperature 1; more narrows the wording.
BOOST = 3.0
# ... less for someone the model read little of: their vector and habits are learned from a few
# thousand characters, and tripling what they add boosts noise. For 20 people with 1,000-20,000
# characters, BOOST gave replies of 60 characters against their 68, with word pairs the
# workspace uses 69 % of the time (theirs: 81 %) and distinct-2 0.94 x theirs; this ramp, 67,
# 74 % and 0.98 x, at style fidelity 0.97 (goal 0.85; bench.drawing, 2 seeds). The top 10 need
# the full boost (0.86 at 1). So the boost grows with the words the model read of the target:
# SMALL_BOOST up to READ_WORDS[0], BOOST from READ_WORDS[1], log-linear between (`boost_for`,
# trainer/wording.py); lower for one of the biggest senders whose wording it narrows, as the
# trainer finds when it fits their length (trainer/lengths.py: VARIETY, `own_boost`).
SMALL_BOOST = 1.0
# The default temperature of /mimic, `mimic sample` and `mimic eval`, applied after the boost
# (which sharpens): at 1.2 the replies' distinct word pairs were 0.96 x the people's own (0.74 x
# at 0.6), and the word guard keeps every word real at any temperature. 1.35 pays for the
# weight of the biggest senders' own words (trainer/wording.py: OWN_WORDS): on chitchat's top
# 10 (the people's distinct-2 0.863), λ 0.5 at 1.2 gave fidelity 0.933 and distinct-2 0.790,
# 0.75 at 1.2 0.962 and 0.770, at 1.3 0.981 and 0.783, at 1.35 0.976 and 0.795, at 1.4 0.979
# and 0.802, with real word pairs 0.81, 0.79, 0.79, 0.79, 0.78 (the people's 0.86;
# `bench.drawing`, 3-4 seeds). 100 people with 1-20k characters: 1.2 -> 1.3 took distinct-2
# 0.963 -> 0.967 (theirs 0.972), fidelity 0.90 either way.
DEFAULT_TEMPERATURE = 1.35
# ... but only among characters the person's voice itself finds plausible: at least this share
# of its likeliest character's probability (else its rare slips would be boosted too).
PLAUSIBLE = 0.1
# A dedicated model (fine-tuned on one person's text alone) is that person's voice already, and
# sharper than the shared model's: drawn at BOOST and 1.2, chitchat's top 10, all with their
# own models, wrote with 0.87 x the people's variety (distinct-2; fidelity 0.965). Its rows are
# drawn at DEDICATED_BOOST and DEDICATED_HEAT x the temperature asked: 0.94 x, fidelity 0.955
# (`bench.drawing`, 2 seeds; the shared model's rows at 2 and 1.3: fidelity 0.916 -> 0.848).
# Measured at the default 1.2 and the person's words weighed 0.5; not re-measured since (1.35,
# up to 0.75).
DEDICATED_BOOST, DEDICATED_HEAT = 2.5, 7 / 6
# Sharper wording runs longer (it rarely reaches the places people stop), so the end mark's
# odds are raised to keep replies as long as the person's: x1.2 gives 56 characters against
# their 56 (top 10, `bench.drawing`, 2 seeds; x2, tuned before replies read the person's last
# messages first, had come to give 41; x1: 62). How much longer depends on the model and the
# workspace (Shakespeare's: 167 characters against 118 at x1.2), so this is where the trainer
# starts fitting a model's own factor to its people's message lengths (trainer/lengths.py);
# versions trained before that use this.
END_ODDS = 1.2
# ... and a reply that runs on past where the workspace's messages stop is drawn to an end: past the
# length LONG_QUANTILE of them stay within (the trainer records it with the shared model:
# LoadedModel.long_message; for its biggest senders, of their own messages: own_long), the end
# mark's odds double every LONG_SLOPE of that length. Sharper wording runs on where people stop: on
# chitchat's top 10, 7.3 % of replies were longer than 99 % of the workspace's messages (the
# people's own: 1.3 %), 3 % ran to the 280-character cut, and their mean was 63 characters against
# 56; with q95 (149) and 2 %: 1.2 %, none, and 58, fidelity 0.914 against 0.906 (`bench.drawing`, 2
# seeds; 4 %: 4.3 %, 59).
LONG_QUANTILE, LONG_SLOPE = 0.95, 0.02
# ... and starts early enough that by the cut (max_len) those odds have doubled this many
# times: where a workspace's long messages reach the cut (Shakespeare's speeches: q95 267
# characters), 36 % of replies ran to it and stopped mid-word before the end was drawn at all.
CUT_DOUBLINGS = 16
# Whether a reply's first letter is a capital follows its target's messages (Row.capitals),
# with the model's own odds counted as this many more of them: read from the person's vector and
# last messages alone, each of chitchat's top 10 got replies 5-7 points (of 100) off their
# messages' share, each of 20 people with 1,000-20,000 characters 16 (BENCHMARKS.md, sixteenth
# and seventeenth sessions); someone with a handful of messages keeps about the model's odds.
# (> 0: a row without counts takes the model's odds.)
CASE_PRIOR = 10.0
MAX_LEN = 280  # a message's cut, in characters (seed included), unless a caller asks for another
GREEDY_BELOW = 1e-3  # temperatures this small are argmax: identical, and immune to float ties
# (person, channel) slot pairs whose contexts a net's step keeps (~6 KB each at the default size).
CONTEXTS = 1024


def boost_for(words: int | None) -> float:
    """The boost of a target whose training messages held `words` words (None: not counted,
    as in versions trained before words were: BOOST)."""
    return BOOST if words is None else by_words(words, SMALL_BOOST, BOOST)


class NoNovelText(Exception):
    """Every message drawn quoted the training data verbatim; nothing safe to post."""


@dataclass
class DrawResult:
    texts: list[str]  # novel, inert messages (at most n, at least 1)
    rejected: int  # drawn and dropped for quoting ≥ WINDOW chars of training text
    blank: int = 0  # drawn and dropped for being empty or whitespace only


# On CPU, the sampler's big products (each layer's recurrent weights and layer 1's input weights)
# run on 8-bit copies of the weights, the activations quantized as they come
# (PyTorch's dynamic quantization, fbgemm): a step for one reply 0.80 -> 0.60 ms, for 20 1.75 ->
# 1.46 ms (the products no longer stream 4.9 MB of float weights from L3 each character), while
# the held-out loss read through them moves 1.3207 -> 1.3210 nats/char (`python -m
# bench.sampling`; BENCHMARKS.md, "What a reply waits for"). The output layer stays in float: its
# few outputs cost less to multiply than its input costs to quantize (one reply's step 4-6 %
# faster, twenty-third session).
INT8 = True
# ... and the rest of a step (each layer's gates, the output layer, the draw) runs in C
# (trainer/native.py), where a C compiler built it: five calls in place of ~70 small torch
# ones, a step for one reply 0.58 x the time, for 20 0.74 x, at the same odds (BENCHMARKS.md,
# "The sampler's step in C").
NATIVE = True


def _pack(weight: torch.Tensor, bias: torch.Tensor) -> Any:
    """An int8 copy of `weight` (out, in), one scale per output row, with its float bias, as
    torch.ops.quantized.linear_dynamic takes it."""
    weight = weight.detach().float().contiguous()
    scales = (weight.abs().amax(1) / 127).clamp(min=1e-12).double()
    with warnings.catch_warnings():  # quantized tensors are deprecated for torchao; the kernel
        warnings.simplefilter("ignore")  # is what is used, and it is probed before use
        quantized = torch.quantize_per_channel(
            weight, scales, torch.zeros(len(weight), dtype=torch.long), 0, torch.qint8)
    return torch.ops.quantized.linear_prepack(quantized, bias.detach().float().contiguous())


def _int8(x: torch.Tensor, packed: Any) -> torch.Tensor:
    return torch.ops.quantized.linear_dynamic(x, packed)


class _Stepper:
    """One LSTM step for a batch, straight from the weights. nn.LSTM spends ~3 ms per
    single-character call on CPU (oneDNN setup); these few matmuls take ~0.1 ms. Layer 0's
    input projection is precomputed per vocabulary entry, so it is a row lookup; what a row's
    context (person and channel) adds is precomputed per row when it joins (`contexts`).
    With `int8`, the big products use 8-bit weights (see INT8); without, or where this torch
    has no such kernel, float ones. Built once per net and weights (`stepper`)."""

    def __init__(self, model: CharLSTM, int8: bool = False) -> None:
        # Weakly: `stepper` keeps steps by net, and a step must not keep its net alive. Whoever
        # steps holds the net (a Generation does).
        self._model = weakref.ref(model)
        cfg = model.config
        self.layers, self.hidden, self.embed = cfg.num_layers, cfg.hidden_size, cfg.embed_dim
        self.adapted = bool(model.adapters)
        first = model.layers[0]
        w_ih0 = first.weight_ih_l0
        e, h = cfg.embed_dim, cfg.hidden_size
        # tanh(g) = 2 sigmoid(2 g) - 1: with the g quarter of every gate's input doubled
        # here, the one sigmoid over all four gates gives g's too (a tanh costs three times
        # a sigmoid on CPU: a step for 20 replies ~0.1 ms less).
        self.twice = twice = torch.ones(4 * h)
        twice[2 * h : 3 * h] = 2
        self.table = (model.embed.weight @ w_ih0[:, :e].T + first.bias_ih_l0
                      + first.bias_hh_l0) * twice
        # Transposed copies laid out contiguously: ~1.5x faster small-batch matmuls on CPU.
        self.w_hh = [(layer.weight_hh_l0.T * twice).contiguous() for layer in model.layers]
        width = [e + cfg.context_size] + [h] * (cfg.num_layers - 1)
        self.w_x = [None] + [(layer.weight_ih_l0[:, : width[i]].T * twice).contiguous()
                             for i, layer in enumerate(model.layers) if i]
        self.bias = [None] + [(layer.bias_ih_l0 + layer.bias_hh_l0) * twice
                              for i, layer in enumerate(model.layers) if i]
        self.head_w, self.head_b = model.head.weight.T.contiguous(), model.head.bias
        if self.adapted:
            a0 = model.adapters[0].a.weight  # (rank, e + k)
            self.table_a = model.embed.weight @ a0[:, :e].T  # (V, rank)
            self.w_u = [(layer.weight_ih_l0[:, width[i]:].T * twice).contiguous()
                        for i, layer in enumerate(model.layers)]
            self.a = [None] + [ad.a.weight.T.contiguous() for ad in model.adapters[1:]]
            self.head_a = model.head_adapter.a.weight.T.contiguous()
            self.head_u = model.head_out.weight.T.contiguous()
        self.habits = cfg.habits if cfg.conditioned else 0
        if self.habits:
            self.habit_in = model.habit_in.weight.T.contiguous()
        # The C step reads the output side's weights as (out, in), as the model holds them.
        self.out_in = {"head": model.head.weight.detach(),
                       "a": [ad.a.weight.detach() for ad in model.adapters],
                       "head_a": (model.head_adapter.a.weight.detach() if self.adapted
                                  else None),
                       "head_u": model.head_out.weight.detach() if self.adapted else None,
                       "habit_in": model.habit_in.weight.detach() if self.habits else None}
        self._contexts: OrderedDict[tuple[int, int], dict[str, torch.Tensor]] = OrderedDict()
        self._contexts_lock = threading.Lock()  # a net's step is shared by every batch
        self.packed: list[Any] = []
        self.native = None  # the C step (trainer/native.py), where it is built and fits
        weights = model.embed.weight
        if NATIVE and weights.device.type == "cpu" and weights.dtype == torch.float32:
            lib = native.library()
            widest = max(cfg.rank if self.adapted else 0, self.habits)
            self.native = lib if lib is not None and widest <= lib.mimic_max_rank() else None
        if int8:
            try:
                zeros = torch.zeros(4 * self.hidden)
                packed = [_pack(first.weight_hh_l0 * twice[:, None], zeros)] + [
                    _pack(torch.cat([layer.weight_ih_l0[:, : width[i]], layer.weight_hh_l0], 1)
                          * twice[:, None], self.bias[i])
                    for i, layer in enumerate(model.layers) if i]
                _int8(torch.zeros(1, self.hidden), packed[0])  # the kernel runs here
                self.packed = packed
            except (RuntimeError, AttributeError, NotImplementedError):
                self.packed = []  # no int8 kernel in this build: float products

    def contexts(self, people: torch.Tensor, channels: torch.Tensor) -> dict[str, torch.Tensor]:
        """What each row's context adds, for rows with these slots (n,): layer 0's gates
        ("g"), and with adapters, each layer's and the head's context factor ("b<i>") and
        layer 0's adapter input from the context ("ca"). Kept per (person, channel) pair
        (CONTEXTS, least recently asked first out): working out a new reply's two rows took
        ~0.4 ms of the ~1.8 ms its admission cost, and its contrast's ("anyone") are
        everyone's."""
        pairs = list(zip(people.tolist(), channels.tolist(), strict=True))
        with self._contexts_lock:  # (held while working out: only one batch steps at a time)
            missing = [pair for pair in dict.fromkeys(pairs) if pair not in self._contexts]
            if missing:
                found = self._work_out(
                    torch.tensor([p for p, _ in missing], device=people.device),
                    torch.tensor([c for _, c in missing], device=people.device))
                for j, pair in enumerate(missing):  # copies: a row must not keep its batch
                    self._contexts[pair] = {key: v[j].clone() for key, v in found.items()}
            rows = []
            for pair in pairs:
                rows.append(self._contexts[pair])
                self._contexts.move_to_end(pair)
            while len(self._contexts) > max(CONTEXTS, len(set(pairs))):
                self._contexts.popitem(last=False)
        return {key: torch.stack([row[key] for row in rows]) for key in rows[0]} if rows else {}

    def _work_out(self, people: torch.Tensor, channels: torch.Tensor) -> dict[str, torch.Tensor]:
        """`contexts`, computed."""
        model = self._model()
        assert model is not None, "a step outlived its net"
        cfg = model.config
        if not cfg.conditioned:
            return {}
        k = model.context(people[:, None], channels[:, None], people[:, None])[:, 0]
        e = cfg.embed_dim
        out = {"g": (k @ model.layers[0].weight_ih_l0[:, e : e + cfg.context_size].T)
               * self.twice}
        if self.adapted:
            out["ca"] = k @ model.adapters[0].a.weight[:, e:].T
            for i, adapter in enumerate([*model.adapters, model.head_adapter]):
                out[f"b{i}"] = adapter.b(k)
        if self.habits:
            q, v = self.habits, cfg.vocab_size
            table = model.habit_out(people)
            out["hw"] = table[:, : q * v].unflatten(-1, (q, v)).contiguous()
            out["hb"] = table[:, q * v :].contiguous()
        return out

    def __call__(self, ids: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
                 ctx: dict[str, torch.Tensor]) -> torch.Tensor:
        """ids (n,) → logits (n, V); h, c (layers, n, H) are updated in place; `ctx` holds
        the rows' `contexts`. Each op costs a few microseconds of dispatch, as much as a
        small matmul: index_select, slices and in-place updates, not indexing, chunk and
        copies (a step for one reply 1.3 → 1.0 ms, BENCHMARKS.md). With the C step, torch
        runs the big products and C the rest (`_native`)."""
        if self.native is not None and h.is_contiguous() and c.is_contiguous():
            return self._native(ids.contiguous(), h, c, ctx)
        x = None
        n = self.hidden
        hs, cs = h.unbind(0), c.unbind(0)  # each layer's, as views: one call, not one a use
        for i in range(self.layers):
            hi, ci = hs[i], cs[i]
            if i == 0:
                rows = self.table.index_select(0, ids)
                gates = (_int8(hi, self.packed[0]).add_(rows) if self.packed
                         else torch.addmm(rows, hi, self.w_hh[0]))
                if "g" in ctx:
                    gates += ctx["g"]
                if self.adapted:
                    u = self.table_a.index_select(0, ids).add_(ctx["ca"]).mul_(ctx["b0"])
                    gates.addmm_(u, self.w_u[0])
            else:
                gates = (_int8(torch.cat([x, hi], 1), self.packed[i]) if self.packed else
                         torch.addmm(self.bias[i], x, self.w_x[i]).addmm_(hi, self.w_hh[i]))
                if self.adapted:
                    gates.addmm_((x @ self.a[i]).mul_(ctx[f"b{i}"]), self.w_u[i])
            # PyTorch's gate order is i, f, g, o: one sigmoid over all four, g's doubled
            # (see `twice`): c = f c + i tanh(g) = f c + 2 i sigmoid(2 g) - i.
            si, sf, sg, so = torch.sigmoid(gates).unflatten(1, (4, n)).unbind(1)
            ci.mul_(sf).addcmul_(si, sg, value=2).sub_(si)
            x = torch.mul(so, torch.tanh(ci), out=hi)
        logits = torch.addmm(self.head_b, x, self.head_w)
        if self.adapted:
            logits.addmm_((x @ self.head_a).mul_(ctx[f"b{self.layers}"]), self.head_u)
        if self.habits:
            logits.unsqueeze_(1).baddbmm_((x @ self.habit_in).unsqueeze_(1), ctx["hw"])
            logits = logits.squeeze_(1).add_(ctx["hb"])
        return logits

    def _native(self, ids: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
                ctx: dict[str, torch.Tensor]) -> torch.Tensor:
        """`__call__` with what follows each big product done in C (trainer/native.c): a
        step's ~30 small torch calls become three."""
        n, H, r = len(ids), self.hidden, self.w_u[0].shape[0] if self.adapted else 0
        four, V = 4 * H, self.head_w.shape[1]

        def at(key: str, *shape: int) -> int | None:  # a row context's address, checked
            t = ctx.get(key)
            return None if t is None else _address(t, n, *shape)

        lib, ptr, out = self.native, ids.data_ptr(), self.out_in
        assert lib is not None and ids.dtype == torch.long
        for state in (h, c):  # checked whole: each layer's h and c, and x, are rows of these
            _address(state, self.layers, n, H)
        x = nxt = None
        for i in range(self.layers):
            hi, ci = h[i], c[i]
            if i == 0:
                gates = (_int8(hi, self.packed[0]) if self.packed else torch.mm(hi, self.w_hh[0]))
            else:
                gates = (_int8(nxt, self.packed[i]) if self.packed else
                         torch.addmm(self.bias[i], x, self.w_x[i]).addmm_(hi, self.w_hh[i]))
            # The layer above's int8 product reads [this layer's new h, its own h]: C lays
            # them out side by side as it goes, in place of a cat.
            nxt = (torch.empty(n, 2 * H) if self.packed and i + 1 < self.layers else None)
            first = i == 0
            lib.mimic_layer(
                n, H, r, _address(gates, n, four),
                self.table.data_ptr() if first else None, ptr if first else None,
                at("g", four) if first else None,
                self.table_a.data_ptr() if first and self.adapted else None,
                at("ca", r) if first else None,
                None if first or not self.adapted else x.data_ptr(), H,
                None if first or not self.adapted else out["a"][i].data_ptr(),
                at(f"b{i}", r), self.w_u[i].data_ptr() if self.adapted else None,
                ci.data_ptr(), hi.data_ptr(), None if nxt is None else nxt.data_ptr(),
                None if nxt is None else h[i + 1].data_ptr())
            x = hi
        logits = torch.empty(n, V)
        lib.mimic_head(
            n, H, V, x.data_ptr(), out["head"].data_ptr(), self.head_b.data_ptr(), r,
            out["head_a"].data_ptr() if self.adapted else None, at(f"b{self.layers}", r),
            out["head_u"].data_ptr() if self.adapted else None, self.habits,
            out["habit_in"].data_ptr() if self.habits else None,
            at("hw", self.habits, V), at("hb", V), logits.data_ptr())
        return logits


def _address(t: torch.Tensor, *shape: int) -> int:
    """Where `t`'s data starts, for C: only a contiguous float32 tensor of this shape (a wrong
    one would be read past its end)."""
    if t.dtype != torch.float32 or t.shape != shape or not t.is_contiguous():
        raise ValueError(f"the C step takes contiguous float32 {shape}, got {t.dtype} "
                         f"{tuple(t.shape)}")
    return t.data_ptr()


_steppers: weakref.WeakKeyDictionary[CharLSTM, tuple[tuple[Any, ...], _Stepper]] = \
    weakref.WeakKeyDictionary()
_steppers_lock = threading.Lock()


def stepper(net: CharLSTM, device: torch.device) -> _Stepper:
    """net's _Stepper, built once and kept while its weights stay as they are (a training run
    changes them in place, which bumps each tensor's version): building one copies the
    weights (3 ms, 17 ms with int8 ones), and the bot starts a batch for every burst."""
    key = (device.type, INT8, NATIVE, *(p._version for p in net.parameters()))
    with _steppers_lock:
        found = _steppers.get(net)
        if found is not None and found[0] == key:
            return found[1]
    with torch.no_grad():  # copies of the weights, not part of any graph
        built = _Stepper(net, int8=INT8 and device.type == "cpu")
    with _steppers_lock:
        _steppers[net] = (key, built)
    return built


def draw_one(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of `probs` (n, V), drawn at those odds: what torch.multinomial(probs,
    1) does (argmax of p / q, q ~ Exp(1); the same draws from the same generator) without its
    checks, ~10 ops fewer a character."""
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return torch.div(probs, noise, out=noise).argmax(-1)


def _check(temperature: float, top_k: int | None) -> None:
    if not (0 < temperature <= 2):  # also rejects NaN
        raise ValueError(f"temperature must be in (0, 2], got {temperature!r}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")


@dataclass(frozen=True)
class Voice:
    """Whose voice, as slots of a conditioned model: the person and channel to write as, and
    the voice drawn against (see BOOST): "anyone" in the same channel, for a person."""

    person: int = 0
    channel: int = 0
    contrast: tuple[int, int] = (0, 0)


Context = tuple[tuple[int, int, str], ...]  # messages read first: (person, channel, text)


@dataclass(frozen=True)
class Row:
    """One message to generate: the text it starts with, its temperature, its voice, the
    messages before it (a thread to answer, or recent messages, so that it starts where
    messages start), the length past which it is drawn to an end (0: none; see
    LONG_QUANTILE), the factor on the end mark's odds (see END_ODDS; a model's own is
    fitted to its people's message lengths when it is trained: trainer/lengths.py), the
    weight of the contrast with its contrast voice (see BOOST), the target ("user:U1")
    whose own words it prefers, through the guard (trainer/wording.py; "": none), and how
    many of the target's messages start with a capital, of those with a letter (see
    CASE_PRIOR; (0, 0): the model's own odds)."""

    seed_text: str = ""
    temperature: float = DEFAULT_TEMPERATURE
    voice: Voice = Voice()
    context: Context = ()
    long_after: int = 0
    end_odds: float = END_ODDS
    boost: float = BOOST
    own_words: str = ""
    capitals: tuple[int, int] = (0, 0)


class Guard(Protocol):
    """What keeps words real while drawing, and weighs them by whose they are
    (trainer/lexicon.py: WordGuard)."""

    def start(self, text: str) -> Any: ...
    def advance(self, state: Any, char_id: int) -> Any: ...
    def word(self, state: Any) -> str | None: ...
    def last_word(self, text: str) -> Any: ...
    def written(self, word: str, odds: Sequence[float], after: Any) -> Any: ...
    def biases(self, rows: Sequence[tuple[Any, str]],
               lasts: Sequence[Any] | None = None) -> torch.Tensor | None: ...


def _dim(key: str) -> int:
    """The batch dimension of a Generation state entry: 2 for group g's LSTM states "h<g>"
    and "c<g>" (layers, k, n, H), one slice per net of the group; 1 for its logits and row
    contexts "logits<g>", "ctx<g>.*" (k, n, ...); 0 for the rest (temps, greedy, length...)."""
    if key[0] in "hc" and key[1:].isdigit():
        return 2
    return 1 if key.startswith(("logits", "ctx")) else 0


# Contexts whose read state a Primer keeps (the bot's: one per model version), ~5 KB each at
# 2 x 320: with 64, a burst over 100 people read every context afresh.
PRIMED_CACHE = 1024
# An answer in a conversation (a thread, a channel) reads the last few messages before it:
# with the 5 channel messages before each held-out message, the workspace model's loss on
# them fell 1.300 -> 1.267 nats/char (bench.quality).
CONTEXT_MESSAGES = 5
# A reply reads at most this many characters of its context (the newest): what it says before
# the reply matters to the model only in its last ~25 characters (held-out loss after the 5
# messages before: the same to 4 decimals from 25 characters to all of them, +0.026 with none),
# and reading costs time: 20 contexts in 25 ms at 32 characters, 103 ms at 100 (bench/context.py;
# `mimic eval` reads the same either way, BENCHMARKS.md).
PRIMED_CHARS = 32


def contrast_net(model: CharLSTM, reference: CharLSTM | None) -> CharLSTM | None:
    """What `model`'s rows are drawn against (see BOOST): the `reference` it was fine-tuned
    from when given, else the model itself when it is conditioned (its "anyone" rows)."""
    return reference if reference is not None else (model if model.config.conditioned else None)


State = tuple[torch.Tensor, torch.Tensor]  # one row's (h, c), each (layers, H)


class Primer:
    """Reads contexts into LSTM states, with a bounded least-recently-used cache. Thread-safe:
    the bot reads requests' contexts on a thread of their own while the sampling thread steps
    the replies already going (bot/batching.py), and the sampling thread then finds them."""

    def __init__(self, vocab: Vocab, size: int = PRIMED_CACHE, chars: int = PRIMED_CHARS
                 ) -> None:
        self.vocab, self.size, self.chars = vocab, size, chars
        self._cache: OrderedDict[tuple[int, Context], State] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._cache)

    def read(self, net: CharLSTM, contexts: Sequence[Context]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """net's (h, c), each (layers, n, H), after reading each context up to (not including)
        the end mark of its last message; a zero state for an empty one. Those not cached yet
        are read together in one packed pass (20 contexts of 200 characters: 142 ms together
        against 20 x 21 ms one by one)."""
        found: dict[Context, State] = {}
        with self._lock:
            for context in contexts:
                if context and (key := (id(net), context)) in self._cache:
                    self._cache.move_to_end(key)
                    found[context] = self._cache[key]
        fresh = [c for c in dict.fromkeys(contexts) if c and c not in found]
        if fresh:
            read = self._read(net, fresh)
            with self._lock:
                for context, state in zip(fresh, read, strict=True):
                    found[context] = self._cache[(id(net), context)] = state
                while len(self._cache) > self.size:
                    self._cache.popitem(last=False)
        zero = torch.zeros(net.config.num_layers, net.config.hidden_size,
                           device=net.embed.weight.device)
        states = [found[c] if c else (zero, zero) for c in contexts]
        return (torch.stack([h for h, _ in states], 1).contiguous(),
                torch.stack([c for _, c in states], 1).contiguous())

    @torch.inference_mode()
    def _read(self, net: CharLSTM, contexts: list[Context]) -> list[State]:
        """One packed pass over the contexts' newest `chars` characters."""
        rows = []
        for context in contexts:
            ids, people, channels = [], [], []
            for person, channel, text in context:
                encoded = [self.vocab.eom, *self.vocab.encode(text)]
                ids += encoded
                # Position t is conditioned on the author of the character it predicts.
                people += [person] * len(encoded)
                channels += [channel] * len(encoded)
            rows.append((ids[-self.chars :], people[-self.chars :], channels[-self.chars :]))
        width = max(len(ids) for ids, _, _ in rows)

        def padded(k: int) -> torch.Tensor:
            return torch.tensor([r[k] + [0] * (width - len(r[k])) for r in rows],
                                device=net.embed.weight.device)
        h, c = net.read(padded(0), torch.tensor([len(r[0]) for r in rows]), padded(1),
                        padded(2))
        return [(h[:, j], c[:, j]) for j in range(len(rows))]


@dataclass(eq=False)
class _OwnNet:
    """Rows of a Generation written by a net of their own: where they are in the batch, and
    that net's logits (m, V), states (layers, m, H) and row contexts for them."""

    net: CharLSTM  # held here: its step holds it weakly
    step: _Stepper
    positions: list[int]
    logits: torch.Tensor
    h: torch.Tensor
    c: torch.Tensor
    ctx: dict[str, torch.Tensor]
    where: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self._place(self.positions)

    def _place(self, positions: list[int]) -> None:
        """Where the rows are in the batch, as a list and as the index a step takes."""
        self.positions = positions
        self.where = torch.tensor(positions, device=self.logits.device)

    def extend(self, more: _OwnNet) -> None:
        """Take `more`'s rows (of the same net) too."""
        self.logits = torch.cat([self.logits, more.logits])
        self.h, self.c = (torch.cat([self.h, more.h], 1), torch.cat([self.c, more.c], 1))
        self.ctx = {key: torch.cat([v, more.ctx[key]]) for key, v in self.ctx.items()}
        self._place(self.positions + more.positions)

    def keep(self, moved: dict[int, int]) -> bool:
        """Follow a compaction (old batch position → new, for the rows kept); False once
        none of these rows is left."""
        kept = [j for j, p in enumerate(self.positions) if p in moved]
        if not kept:
            return False
        if len(kept) < len(self.positions):
            index = torch.tensor(kept, device=self.logits.device)
            self.logits, self.h, self.c = (self.logits.index_select(0, index),
                                           self.h.index_select(1, index).contiguous(),
                                           self.c.index_select(1, index).contiguous())
            self.ctx = {key: v.index_select(0, index) for key, v in self.ctx.items()}
        self._place([moved[self.positions[j]] for j in kept])
        return True


class Generation:
    """Messages being generated together, one character a step. Rows may join between steps
    (the bot adds requests that arrive while others are being written: continuous batching)
    and leave the batch when they end, so the cost follows the messages' real lengths.

    Each row reads its context messages (if any), then an end of message, then its seed text,
    with every character conditioned as in training (on its author and channel; the new
    message on the row's voice), and ends at end of message or at `max_len` characters in
    all, seed included. UNK is never drawn. Every character is drawn contrasted with the
    row's contrast voice (see BOOST): read by `reference` when given (the shared model a
    dedicated one was fine-tuned from, or an older mimic's base), else by the model itself;
    whether a message's first letter is a capital follows the row's `capitals` (`_case`).
    With a `guard`, no character that would make a word the workspace never used is drawn,
    a row's words are weighed by its target's use of them (Row.own_words), and a row does not
    write the word it just wrote again where that word can go on into a longer one
    (WordGuard._repeat: by the odds each letter of it was drawn at, kept as the row writes).
    Past its `long_after` characters (or sooner, to end before `max_len`: CUT_DOUBLINGS), a
    row's end mark grows likelier (see LONG_QUANTILE).

    A conditioned model's batch also takes rows written by a net of their own (`add(rows,
    net)`: a dedicated model fine-tuned from it), drawn against its "anyone" rows: the bot
    writes every reply of a workspace in one batch, where a batch per dedicated model stepped
    two nets for its one reply and held up every other reply in the meantime.
    """

    def __init__(self, model: CharLSTM, vocab: Vocab, *, reference: CharLSTM | None = None,
                 guard: Guard | None = None, top_k: int | None = None, max_len: int = MAX_LEN,
                 generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu", stop_at_eom: bool = True,
                 plausible: float = PLAUSIBLE, primer: Primer | None = None) -> None:
        self.model, self.vocab, self.top_k, self.max_len = model, vocab, top_k, max_len
        self.plausible = plausible  # another than the default only to compare (bench/drawing.py)
        self.generator, self.device, self.guard = generator, torch.device(device), guard
        self.stop_at_eom = stop_at_eom
        self._draw_device = generator.device if generator is not None else self.device
        # The C draw (trainer/native.py), where it is built: on CPU, noise drawn there too.
        self._c = (native.library() if NATIVE and top_k is None and self.device.type == "cpu"
                   and self._draw_device == self.device else None)
        contrast = contrast_net(model, reference)
        self._nets = [model] + ([] if contrast is None else [contrast])
        # Nets stepped as one batch: a model drawn against its own "anyone" rows is one
        # group of both (one call a step: it costs about the same for 20 rows as for 40);
        # a dedicated model and its reference are a group each.
        self._groups = ([(stepper(model, self.device), [0, 1])] if contrast is model else
                        [(stepper(net, self.device), [m]) for m, net in enumerate(self._nets)])
        self._where = {m: (g, j) for g, (_, members) in enumerate(self._groups)
                       for j, m in enumerate(members)}  # net → (group, slice)
        self._primer = primer if primer is not None else Primer(vocab)
        self._unk, self._eom = (torch.tensor([i], device=self.device)
                                for i in (vocab.unk, vocab.eom))
        self._alive: list[int] = []  # row ids in batch order
        # Batch-aligned (see _dim): logits<g>, h<g>, c<g>, ctx<g>.* for group g, whose
        # slice j is net members[j] (0 the voice, 1 the contrast); temps and greedy.
        self._state: dict[str, torch.Tensor] = {}
        self._flat: list[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]] = []
        self._greedy = False  # whether any row going is drawn greedily
        self._boosted = False  # ... or with a contrast (not all bench rows are)
        # id → (row, drawn, its guard's state, the last word it wrote, the odds the letters of
        # the word it is writing were drawn at)
        self._rows: dict[int, tuple[Row, list[int], Any, Any, list[float]]] = {}
        self._done: dict[int, str] = {}
        self._next = 0
        self._own: list[_OwnNet] = []  # rows written by nets of their own
        # Rows yet to write a letter, and which ids are letters and capitals (see _case).
        self._unlettered: set[int] = set()
        self._letters = frozenset(i for c, i in vocab.stoi.items() if c.isalpha())
        capitals = torch.tensor([c.isupper() for c in vocab.itos], device=self.device)
        self._letter_mask = torch.tensor([c.isalpha() for c in vocab.itos], device=self.device)
        self._cases = (capitals, self._letter_mask & ~capitals)

    @property
    def active(self) -> bool:
        return bool(self._alive)

    def __len__(self) -> int:
        """Rows still being written."""
        return len(self._alive)

    @torch.inference_mode()
    def add(self, rows: Sequence[Row], net: CharLSTM | None = None) -> list[int]:
        """Start generating `rows`; returns their ids for `take`. With `net`, the rows are
        written by that net (a dedicated model fine-tuned from this batch's conditioned model,
        with its slots and vocabulary) and drawn against this model's rows for their contrast
        voice."""
        for row in rows:
            _check(row.temperature, self.top_k)
            if len(row.seed_text) > self.max_len:
                raise ValueError(f"seed_text ({len(row.seed_text)} chars) is longer than "
                                 f"max_len {self.max_len}")
            if not 0 <= row.end_odds < math.inf:  # also rejects NaN
                raise ValueError(f"end_odds must be a finite factor >= 0, got {row.end_odds!r}")
            if not 0 <= row.boost < math.inf:
                raise ValueError(f"boost must be a finite weight >= 0, got {row.boost!r}")
            capitalised, lettered = row.capitals
            if not (isinstance(capitalised, int) and isinstance(lettered, int)
                    and 0 <= capitalised <= lettered):
                raise ValueError("capitals must be (capitalised, lettered) message counts, "
                                 f"0 <= capitalised <= lettered, got {row.capitals!r}")
        if net is not None and self._groups[0][1] != [0, 1]:
            raise ValueError("rows with a net of their own need a conditioned model's batch, "
                             "drawn against its own \"anyone\" rows")
        if not rows:
            return []
        n, start = len(rows), len(self._alive)
        # The end mark that starts the new message, then its seed, in the row's voice: step
        # by step (seeds are short, most are empty), all rows at once.
        seeds = [[self.vocab.eom, *self.vocab.encode(r.seed_text)] for r in rows]
        # Rows with a net of their own are in this model's batch for their contrast only: its
        # voice slice reads them in the contrast voice too (their person may be new to it).
        mine = rows if net is None else [replace(r, voice=Voice(*r.voice.contrast,
                                                                r.voice.contrast))
                                         for r in rows]
        new: dict[str, torch.Tensor] = {}
        for g, (step, members) in enumerate(self._groups):
            logits, h, c, ctx = self._start(step, self._nets[members[0]], members, mine, seeds)
            new |= {f"logits{g}": logits, f"h{g}": h, f"c{g}": c}
            new |= {f"ctx{g}.{key}": v for key, v in ctx.items()}
        if net is not None:
            own_step = stepper(net, self.device)
            logits, h, c, ctx = self._start(own_step, net, [0], rows, seeds)
            joined = _OwnNet(net, own_step, list(range(start, start + n)), logits[0], h[:, 0],
                             c[:, 0], {k: v[0] for k, v in ctx.items()})
            same = next((own for own in self._own if own.net is net), None)
            if same is None:
                self._own.append(joined)
            else:  # one step a character for all of a net's rows
                same.extend(joined)
        temps = torch.tensor([r.temperature for r in rows], device=self.device)
        new |= {"greedy": temps < GREEDY_BELOW, "temps": temps.clamp(min=GREEDY_BELOW)[:, None],
                "boost": torch.tensor([[r.boost] for r in rows], device=self.device)}
        # Length so far, the end's log-odds factor, where they start to grow (0: never) and
        # how fast.
        cap = self.max_len / (1 + CUT_DOUBLINGS * LONG_SLOPE)
        longs = [min(float(r.long_after), cap) if r.long_after else 0.0 for r in rows]
        new |= {"length": torch.tensor([[float(len(r.seed_text))] for r in rows],
                                       device=self.device),
                "odds": torch.tensor([[math.log(r.end_odds) if r.end_odds else -math.inf]
                                      for r in rows], device=self.device),
                "long": torch.tensor([[x] for x in longs], device=self.device),
                "rate": torch.tensor([[math.log(2) / (x * LONG_SLOPE) if x else 0.0]
                                      for x in longs], device=self.device),
                "capitals": torch.tensor([[k + 0.0, m + CASE_PRIOR] for k, m in
                                          (r.capitals for r in rows)], device=self.device)}
        for key, value in new.items():
            old = self._state.get(key)
            self._state[key] = (value if old is None else torch.cat([old, value], _dim(key))
                                ).contiguous()
        self._greedy = self._greedy or any(r.temperature < GREEDY_BELOW for r in rows)
        self._boosted = self._boosted or any(r.boost for r in rows)
        ids_ = list(range(self._next, self._next + len(rows)))
        self._next += len(rows)
        self._alive += ids_
        for i, row in zip(ids_, rows, strict=True):
            self._rows[i] = (row, [], *((self.guard.start(row.seed_text),
                                         self.guard.last_word(row.seed_text))
                                        if self.guard else (None, None)), [])
            if not any(ch.isalpha() for ch in row.seed_text):
                self._unlettered.add(i)
            if len(row.seed_text) == self.max_len:  # nothing left to write
                self._finish(i)
        if self._compact() is None:
            self._view()
        return ids_

    def _start(self, step: _Stepper, net: CharLSTM, members: list[int], rows: Sequence[Row],
               seeds: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                dict[str, torch.Tensor]]:
        """A group's (or a net of its own's) first logits (k, n, V), states (layers, k, n, H)
        and row contexts (k, n, ...) for new rows: their contexts read, then their seeds."""
        k, n = len(members), len(rows)
        parts = [step.contexts(*self._slots(rows, m)) for m in members]
        ctx = {key: torch.stack([part[key] for part in parts]) for key in parts[0]}
        # The contexts are read once: who reads them does not depend on the voice.
        h, c = (t.unsqueeze(1).repeat(1, k, 1, 1)
                for t in self._primer.read(net, [r.context for r in rows]))
        flat = {key: v.flatten(0, 1) for key, v in ctx.items()}
        hf, cf = h.flatten(1, 2), c.flatten(1, 2)  # views: the steps update h and c
        logits = torch.zeros(k * n, len(self.vocab), device=self.device)
        for i in range(max(map(len, seeds))):
            going = [j * n + r for j in range(k) for r in range(n) if i < len(seeds[r])]
            ids = torch.tensor([seeds[x % n][i] for x in going], device=self.device)
            if len(going) == k * n:
                logits = step(ids, hf, cf, flat).float()
                continue
            index = torch.tensor(going, device=self.device)
            hs, cs = hf[:, index], cf[:, index]
            out = step(ids, hs, cs, {key: v[index] for key, v in flat.items()})
            hf[:, index], cf[:, index], logits[index] = hs, cs, out.float()
        return logits.view(k, n, -1), h, c, ctx

    def _slots(self, rows: Sequence[Row], m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows' person and channel slots as net m reads them: the voice, or its
        contrast."""
        pairs = [(r.voice.person, r.voice.channel) if m == 0 else r.voice.contrast
                 for r in rows]
        return (torch.tensor([p for p, _ in pairs], device=self.device),
                torch.tensor([c for _, c in pairs], device=self.device))

    def _biases(self) -> torch.Tensor | None:
        """(n, V): what the guard adds to each row's logits: -inf for what it may not draw
        next, its target's word weights (None: nothing, for every row)."""
        if self.guard is None:
            return None
        rows = [self._rows[i] for i in self._alive]
        biases = self.guard.biases([(state, row.own_words) for row, _d, state, *_ in rows],
                                   [last for _r, _d, _s, last, _o in rows])
        return biases if biases is None or biases.device == self.device else biases.to(
            self.device)

    @torch.inference_mode()
    def step(self) -> None:
        """Draw one character for every row still going."""
        st = self._state
        logits = self._logits(0)
        for own in self._own:
            logits = logits.index_copy(0, own.where, own.logits)
        biases = self._biases()
        if self._c is not None and not self._greedy and not self._unlettered:
            _probs, nxt, odds = self._draw_in_c(logits, biases)
        else:
            _probs, nxt, odds = self._draw(logits, biases)
        for k, (i, token) in enumerate(zip(self._alive, nxt.tolist(), strict=True)):
            row, drawn, state, last, spelling = self._rows[i]
            drawn.append(token)
            if token in self._letters:
                self._unlettered.discard(i)
            if self.guard is not None:
                new = self.guard.advance(state, token)
                word = self.guard.word(state)
                if self.guard.word(new) is not None:
                    spelling = [*spelling, odds[k]] if word is not None else [odds[k]]
                elif word is not None:  # it ended here (None: not a word after all)
                    last = self.guard.written(word, [*spelling, odds[k]], new) or last
                self._rows[i] = (row, drawn, new, last, spelling)
            if (self.stop_at_eom and token == self.vocab.eom) or \
                    len(row.seed_text) + len(drawn) >= self.max_len:
                self._finish(i)
        st["length"] += 1
        kept = self._compact()
        if kept is not None:
            nxt = nxt.index_select(0, kept)
        if self._alive:
            self._advance(nxt)

    def _draw(self, logits: torch.Tensor, biases: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        """The odds of every row's next character (n, V), from the voice's `logits` (n, V)
        and the guard's `biases`; the character drawn at them (n,), and its odds (for the
        guard; [] without one)."""
        st = self._state
        eom = self.vocab.eom
        logits = logits.index_fill(1, self._unk, -torch.inf)
        if biases is not None:
            logits.add_(biases)
        logp = logits.log_softmax(-1)
        # Temperature shapes the wording, not the length: whether the message ends here is
        # drawn at the model's own odds (x the row's end_odds). Tempering the end mark too made
        # messages at 0.6 2.5x as long as the person's (it is rarely the likeliest symbol).
        # Past "long", its odds double every LONG_SLOPE of it too: in log-odds, as the
        # doublings past a short length overflow a float.
        log_odds = (st["length"] - st["long"]).clamp_(min=0).mul_(st["rate"])
        log_odds.add_(st["odds"])
        log_end = logp[:, eom : eom + 1]
        end = torch.sigmoid(log_end - torch.log1p(-log_end.exp()) + log_odds)
        words = own = logp.index_fill(1, self._eom, -torch.inf)
        # A row whose only allowed next mark is the end (a finished word at max length, say):
        # no word is likely at all (the boost and top_k keep the likeliest word).
        only_end = None
        if len(self._nets) > 1 and self._boosted:
            contrast = logp - self._logits(1).log_softmax(-1)
            likeliest = words.max(-1, keepdim=True).values
            only_end = likeliest == -torch.inf
            words = torch.where(words >= likeliest + math.log(self.plausible),
                                words + st["boost"] * contrast, -torch.inf)
        scaled = words / st["temps"]
        if self.top_k is not None and self.top_k < scaled.shape[-1]:
            kth = torch.topk(scaled, self.top_k, dim=-1).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, -torch.inf)
        if only_end is None:
            only_end = torch.isinf(scaled).all(-1, keepdim=True)
        end = end.masked_fill(only_end, 1.0)
        probs = torch.softmax(scaled.masked_fill(only_end, 0), dim=-1)
        # Nor whether a message's first letter is a capital: drawn against "anyone", each
        # person's habit became all or none (chitchat's top 10: someone who starts 23 % of their
        # messages with a capital got 0 %, someone with 89 % got 100 %: 19 points off a person
        # on average; BENCHMARKS.md, sixteenth session). See _case.
        if self._unlettered:
            probs = self._case(probs, own)
        probs = probs * (1 - end)
        probs.index_copy_(1, self._eom, end)
        if self._draw_device == self.device:
            nxt = draw_one(probs, self.generator)
        else:
            nxt = draw_one(probs.to(self._draw_device), self.generator).to(self.device)
        if self._greedy:
            nxt = torch.where(st["greedy"], probs.argmax(-1), nxt)
        # The odds each character was drawn at: what a word just written would be drawn at
        # again (the guard keeps a row from writing it twice in a row).
        odds = probs.gather(1, nxt[:, None]).squeeze(1).tolist() if self.guard else []
        return probs, nxt, odds

    def _draw_in_c(self, logits: torch.Tensor, biases: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        """`_draw` in one C call (trainer/native.c: mimic_draw) in place of ~40 small torch
        calls, from the same Exp(1) noise: for steps without greedy rows, top_k or rows yet
        to write a letter (`step` checks)."""
        st, (n, width) = self._state, logits.shape
        noise = torch.empty(n, width).exponential_(generator=self.generator)
        probs, nxt, drawn = torch.empty(n, width), torch.empty(n, dtype=torch.long), torch.empty(n)
        contrasted = len(self._nets) > 1 and self._boosted
        assert self._c is not None
        self._c.mimic_draw(
            n, width, _address(logits, n, width),
            None if biases is None else _address(biases, n, width),
            _address(self._logits(1), n, width) if contrasted else None,
            self.vocab.unk, self.vocab.eom, math.log(self.plausible),
            *(_address(st[key], n, 1) for key in ("boost", "temps", "length", "long", "rate",
                                                   "odds")),
            noise.data_ptr(), probs.data_ptr(), nxt.data_ptr(), drawn.data_ptr())
        return probs, nxt, drawn.tolist()

    def _advance(self, nxt: torch.Tensor) -> None:
        """Step every net's rows past the characters just drawn."""
        for g, (h, c, ctx) in enumerate(self._flat):
            k = len(self._groups[g][1])
            ids = torch.cat([nxt] * k) if k > 1 else nxt  # cat: a few us, repeat: ~50
            logits = self._groups[g][0](ids, h, c, ctx)
            logits = logits if logits.dtype == torch.float32 else logits.float()
            self._state[f"logits{g}"] = logits.view(k, len(nxt), -1)
        for own in self._own:
            own.logits = own.step(nxt.index_select(0, own.where), own.h, own.c, own.ctx).float()

    def _logits(self, m: int) -> torch.Tensor:
        """(n, V): net m's logits for the next character of every row going."""
        g, j = self._where[m]
        return self._state[f"logits{g}"][j]

    def _view(self) -> None:
        """Each group's states and contexts as the stepper takes them, (layers, k * n, H)
        and (k * n, ...): views, so that its in-place updates land in the state."""
        st = self._state
        self._flat = [(st[f"h{g}"].flatten(1, 2), st[f"c{g}"].flatten(1, 2),
                       {key.split(".", 1)[1]: value.flatten(0, 1)
                        for key, value in st.items() if key.startswith(f"ctx{g}.")})
                      for g in range(len(self._groups))]

    def take(self, ids: Sequence[int]) -> list[str] | None:
        """The finished texts of `ids` (forgotten here), or None while any is still going."""
        if any(i not in self._done for i in ids):
            return None
        return [self._done.pop(i) for i in ids]

    def _case(self, probs: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """`probs` (n, V), where the rows yet to write a letter write one (at `probs`' odds),
        a capital at the odds of their `capitals`, the model's own (`words`: its
        log-probabilities, guard included, neither boosted nor tempered) counted as CASE_PRIOR
        more messages; within capitals and other letters, as `probs` would (as the model
        would, where `probs` left none of them)."""
        rows = torch.tensor([i in self._unlettered for i in self._alive], device=self.device)
        own, tiny = words.softmax(-1), torch.finfo(probs.dtype).tiny
        # Each case's mass, in the model's odds and in the draw's.
        cap, low = (own.masked_fill(~part, 0).sum(-1, keepdim=True) for part in self._cases)
        haves = [probs.masked_fill(~part, 0).sum(-1, keepdim=True) for part in self._cases]
        letters = haves[0] + haves[1]
        # (capitalised, lettered + CASE_PRIOR): with no counts, (0, CASE_PRIOR) gives the
        # model's own share.
        capitals, counted = self._state["capitals"].unbind(-1)
        upper = (capitals[:, None] + CASE_PRIOR * cap / (cap + low).clamp(min=tiny)
                 ) / counted[:, None]
        # Never a case the model (or the guard) rules out here.
        upper = torch.where(cap > 0, torch.where(low > 0, upper, 1.0), 0.0)
        new = probs.masked_fill(self._letter_mask, 0)
        for part, odds, want, have in zip(self._cases, (upper, 1 - upper), (cap, low), haves,
                                          strict=True):
            inside = torch.where(have > 0, probs / have.clamp(min=tiny),
                                 own / want.clamp(min=tiny))
            new += inside.masked_fill(~part, 0) * (letters * odds)
        return torch.where(rows[:, None], new, probs)

    def _finish(self, i: int) -> None:
        self._unlettered.discard(i)
        row, drawn, *_guard = self._rows.pop(i)
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
        moved = {old: new for new, old in enumerate(keep)}
        self._own = [own for own in self._own if own.keep(moved)]
        going = [self._rows[i][0] for i in self._alive]
        self._greedy = any(r.temperature < GREEDY_BELOW for r in going)
        self._boosted = any(r.boost for r in going)
        self._view()
        return index


def sample_rows(
    model: CharLSTM,
    vocab: Vocab,
    rows: Sequence[Row],
    *,
    reference: CharLSTM | None = None,
    guard: Guard | None = None,
    top_k: int | None = None,
    max_len: int = MAX_LEN,
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
        batch = Generation(model, vocab, reference=reference, guard=guard, top_k=top_k,
                           max_len=max_len, generator=generator, device=device,
                           stop_at_eom=stop_at_eom)
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
    guard: Guard | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    top_k: int | None = None,
    seed_text: str = "",
    voice: Voice = Voice(),
    context: Context = (),
    max_len: int = MAX_LEN,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    stop_at_eom: bool = True,
) -> list[str]:
    """Draw `n` messages in one batch, all from the same seed text, temperature and voice."""
    _check(temperature, top_k)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return sample_rows(model, vocab, [Row(seed_text, temperature, voice, context)] * n,
                       reference=reference, guard=guard, top_k=top_k, max_len=max_len,
                       generator=generator, device=device, stop_at_eom=stop_at_eom)


def draw(
    model: CharLSTM,
    vocab: Vocab,
    novelty: NoveltyIndex | None,
    *,
    n: int = 1,
    reference: CharLSTM | None = None,
    guard: Guard | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    top_k: int | None = None,
    seed_text: str = "",
    voice: Voice = Voice(),
    context: Context = (),
    max_len: int = MAX_LEN,
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
            return sample(model, vocab, n=k, reference=reference, guard=guard,
                          temperature=temperature, top_k=top_k, seed_text=seed_text,
                          voice=voice, context=context, max_len=max_len, generator=generator,
                          device=device)
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


def reply(loaded: LoadedModel, target: str, *, n: int = 1,
          temperature: float = DEFAULT_TEMPERATURE, seed_text: str = "",
          where: str | None = None, context: Sequence[tuple[str, str]] | None = None,
          top_k: int | None = None, generator: torch.Generator | None = None,
          device: torch.device | str = "cpu",
          sampler: Callable[[Row, int], list[str]] | None = None) -> DrawResult:
    """`n` messages the way mimic serves them, in the voice of `target` ("user:U1" or
    "channel:C1") from a published version: as an answer to `context` ((author id, text)
    pairs, oldest first, said in channel `where`), or, without one, after the target's own
    recent messages; drawn against "anyone" (see BOOST), with real words only, ended as the
    version's lengths say. `sampler(row, k)` replaces the drawing done here (the bot's shared
    batch)."""
    row = loaded.row(target, seed_text=seed_text, temperature=temperature, where=where,
                     context=context)
    if sampler is None:
        def sampler(row: Row, k: int) -> list[str]:
            return sample_rows(loaded.model, loaded.vocab, [row] * k, reference=loaded.reference,
                               guard=loaded.guard, top_k=top_k, generator=generator,
                               device=device)
    return draw(loaded.model, loaded.vocab, loaded.novelty, n=n, temperature=temperature,
                top_k=top_k, seed_text=seed_text, sampler=lambda k: sampler(row, k))
