"""Training: seq-to-seq char-LSTM with truncated BPTT, Adam, warmup + cosine, early stopping.

The corpus is one long id stream (messages joined by EOM), with, for a conditioned model, the
author's and the channel's slot beside every character (a `Stream`). It is cut into
`batch_size` contiguous lanes that are walked `seq_len` characters at a time, carrying the
(detached) LSTM state from one chunk to the next, so the model sees long context while
backprop stays short, and every position contributes to the loss. A share of messages is shown
as written by "anyone" (and in "any" channel), so the same network also learns the workspace
as a whole: that is what a person's voice is drawn against.

Inside a process group (torchrun workers, trainer/distributed.py) each rank walks its equal
share of the same lanes and DistributedDataParallel averages the gradients, so N ranks of
B/N lanes take the steps one process of B lanes would. Rank 0 alone validates, keeps the best
weights, reports progress and decides when to stop, and every rank follows that decision.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from mimic.trainer.model import CharLSTM, LSTMState

StopReason = Literal["budget", "early_stop", "max_steps", "interrupted"]
# A stop decision as a number, to send it to every rank.
_STOPS: tuple[StopReason | None, ...] = (None, "budget", "early_stop", "max_steps", "interrupted")


class _Stop(Exception):
    """Leaves both loops of fit() at once."""


@dataclass
class TrainConfig:
    """Every training hyperparameter, in one place. Defaults come from bench/train_speed.py
    on a 2-core CPU: throughput (chars/s) was flat from 32 to 256 lanes, so 32 lanes × 128
    steps buys the most Adam updates per second (~4k chars each) for the same compute."""

    batch_size: int = 32  # lanes walked in parallel
    seq_len: int = 128  # TBPTT chunk: backprop length, state carries on beyond it
    lr: float = 3e-3  # peak Adam learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr × this
    warmup_steps: int = 30  # linear warmup from ~0 to lr
    weight_decay: float = 0.0  # AdamW (decoupled); dropout + early stopping usually suffice
    grad_clip: float = 1.0  # max global gradient norm (LSTMs occasionally spike)
    max_seconds: float = 120.0  # wall-clock budget (0 = none); the cosine spans this
    max_steps: int = 0  # step budget (0 = none); the cosine spans whichever ends first
    eval_every_s: float = 15.0  # validate this often in seconds (0 = off) ...
    eval_every_steps: int = 0  # ... and/or in steps (0 = off)
    val_max_chars: int = 65_536  # cap per validation, so it stays a few % of the time
    patience: int = 4  # stop after this many validations without improvement
    min_delta: float = 1e-3  # nats/char an improvement must beat
    progress_every_s: float = 1.0  # on_progress heartbeat between validations
    num_threads: int = 0  # CPU threads (0 = all cores; fewer leaves room for the bot)
    seed: int = 0
    # Conditioned models: the share of messages shown with the "anyone" person (channel)
    # instead of their own, drawn anew each epoch; and how much faster the person and channel
    # vectors learn than the rest (each is updated only by its own few messages).
    anyone_share: float = 0.15
    context_lr_scale: float = 10.0
    # Decoupled weight decay of those own parameters (AdamW), every step whether or not the
    # batch held the person: someone seldom seen is pulled back towards "anyone". Off: at 0.1
    # small people's loss as themselves beat "anyone" again, but their replies lost their
    # likeness (fidelity on 20 people with 1-20k chars 0.70 -> 0.31; BENCHMARKS.md).
    own_decay: float = 0.0
    # The training step's products: "auto" is bfloat16 on GPUs, and on a CPU where a step of
    # this model measures BFLOAT16_GAIN × faster that way (AMX: ~1.5-1.9×; where bfloat16 is
    # emulated, several times slower), float32 elsewhere. Weights, optimiser and validation
    # stay float32 on CPU.
    precision: Literal["auto", "float32", "bfloat16"] = "auto"


# A bfloat16 step must be this much faster: it learns a little less (2 x 256 on chitchat,
# 600 equal steps: held-out 1.654 against float32's 1.649).
BFLOAT16_GAIN = 1.25


@dataclass
class Stream:
    """Characters to train or score on, with (for a conditioned model) each character's
    author and channel slot and the index of its message."""

    ids: np.ndarray
    people: np.ndarray | None = None
    channels: np.ndarray | None = None
    messages: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def of(cls, data: Stream | np.ndarray | torch.Tensor) -> Stream:
        return data if isinstance(data, Stream) else cls(np.asarray(data))

    def head(self, n: int) -> Stream:
        """The first n characters."""
        cut = {k: None if v is None else v[:n] for k, v in vars(self).items()}
        return Stream(**cut)

    def tensors(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v, dtype=torch.long).to(device)
                for k, v in vars(self).items() if v is not None}


@dataclass
class FitResult:
    best_state_dict: dict[str, torch.Tensor]  # CPU tensors
    best_val_loss: float  # nats/char
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    chars_trained: int = 0
    stopped_reason: StopReason = "budget"
    precision: Literal["float32", "bfloat16"] = "float32"  # the training step's (see TrainConfig)


def cores() -> int:
    """The CPU cores this process may run on (under `taskset` or a container's cpuset, fewer
    than the machine has: two threads on one core take turns)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _set_threads(device: torch.device, num_threads: int) -> None:
    if device.type == "cpu":
        torch.set_num_threads(num_threads or cores())


def _autocast(device: torch.device, precision: str):  # noqa: ANN202 - type varies
    # bfloat16 on float32 weights. On GPU for the embedding/head matmuls (cuDNN's LSTM itself
    # stays fp32, TF32); on CPU oneDNN's LSTM and the products too.
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


_measured: dict[tuple[Any, ...], tuple[float, float]] = {}  # chars/s in float32, bfloat16


def _speeds(model: CharLSTM, cfg: TrainConfig, device: torch.device) -> tuple[float, float]:
    """`model`'s training chars/s on this CPU in float32 and in bfloat16 (0: unsupported),
    measured once per size, lanes and threads in a process."""
    key = (model.config, cfg.batch_size, cfg.seq_len, torch.get_num_threads())
    if key not in _measured:
        fp32 = _step_speed(model, cfg, device, "float32")
        try:
            bf16 = _step_speed(model, cfg, device, "bfloat16")
        except RuntimeError:  # no bfloat16 kernels for some op on this CPU
            bf16 = 0.0
        _measured[key] = (fp32, bf16)
    return _measured[key]


def training_precision(model: CharLSTM, cfg: TrainConfig, device: torch.device
                       ) -> Literal["float32", "bfloat16"]:
    """What cfg.precision means for `model` on `device` (see TrainConfig.precision)."""
    if cfg.precision != "auto":
        return cfg.precision
    if device.type == "cuda":
        return "bfloat16"
    if device.type != "cpu":
        return "float32"
    fp32, bf16 = _speeds(model, cfg, device)
    return "bfloat16" if bf16 >= BFLOAT16_GAIN * fp32 else "float32"


def _lanes(data: dict[str, torch.Tensor], batch_size: int, seq_len: int,
           offset: int = 0) -> dict[str, torch.Tensor]:
    """Lanes of shape (B, L): "x" the inputs, "y" the targets (x shifted by one), and each
    context array aligned with "y": position t is conditioned on the author and channel of
    the character it predicts. B shrinks for short streams."""
    ids = data["ids"]
    usable = ids.numel() - offset - 1
    b = max(1, min(batch_size, usable // max(1, seq_len)))
    length = usable // b
    lanes = {"x": ids[offset : offset + b * length].view(b, length)}
    for key, values in data.items():
        key = "y" if key == "ids" else key
        lanes[key] = values[offset + 1 : offset + 1 + b * length].view(b, length)
    return lanes


def _share(lanes: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    """Rank `rank`'s equal share of the lanes (a stream too short for the full batch may leave
    a remainder out)."""
    b = lanes["x"].shape[0] // world
    if b == 0:
        raise ValueError(f"the training stream is too short to give {world} workers a lane "
                         "each: train in fewer processes")
    return {key: values[rank * b : (rank + 1) * b] for key, values in lanes.items()}


def _detach(state: LSTMState) -> LSTMState:
    return state[0].detach(), state[1].detach()


def _forward(model: CharLSTM | DistributedDataParallel, lanes: dict[str, torch.Tensor], i: int,
             seq_len: int, state: LSTMState | None) -> tuple[torch.Tensor, LSTMState]:
    chunk = slice(i, i + seq_len)
    return model(lanes["x"][:, chunk], state,
                 lanes["people"][:, chunk] if "people" in lanes else None,
                 lanes["channels"][:, chunk] if "channels" in lanes else None)


@torch.inference_mode()
def evaluate(
    model: CharLSTM,
    data: Stream | np.ndarray | torch.Tensor,
    device: torch.device | str = "cpu",
    *,
    max_chars: int | None = None,
    batch_size: int = 32,
    seq_len: int = 256,
) -> float:
    """Mean cross-entropy in nats/char of `data` (statefully, like training). Lanes are at
    least ~1k characters so the cold start of each lane barely matters; use the same
    arguments when comparing two models."""
    device = torch.device(device)
    stream = Stream.of(data)
    if max_chars is not None:
        stream = stream.head(max_chars + 1)
    if len(stream) < 2:
        raise ValueError("need at least 2 characters to evaluate")
    stream.messages = None  # what the lanes carry, besides the characters: contexts only
    was_training = model.training
    model.eval()
    try:
        n = len(stream)
        lanes = _lanes(stream.tensors(device), max(1, min(batch_size, (n - 1) // 1024)), 1)
        state, total, count = None, 0.0, 0
        for i in range(0, lanes["x"].shape[1], seq_len):
            with _autocast(device, "bfloat16" if device.type == "cuda" else "float32"):
                logits, state = _forward(model, lanes, i, seq_len, state)
            target = lanes["y"][:, i : i + seq_len]
            total += F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
            ).item()
            count += target.numel()
        return total / count
    finally:
        model.train(was_training)


def throughput(model: CharLSTM, cfg: TrainConfig, device: torch.device) -> float:
    """Training characters per second of `model` under `cfg` on `device`, at the precision it
    would train in (`training_precision`). Leaves the weights untouched."""
    _set_threads(device, cfg.num_threads)
    precision = training_precision(model, cfg, device)
    if device.type == "cpu" and cfg.precision == "auto":  # measured both ways already
        return _speeds(model, cfg, device)[precision == "bfloat16"]
    return _step_speed(model, cfg, device, precision)


def _step_speed(model: CharLSTM, cfg: TrainConfig, device: torch.device, precision: str,
                seconds: float = 0.1) -> float:
    """Forward and backward passes over random ids, after one warm-up step, for at least
    `seconds` and two steps: two steps of a test's tiny model (milliseconds each) once timed
    bfloat16 1.25 x faster by chance, and its model, trained that way, learned otherwise
    (a 0.1 s floor costs a real model nothing: one of its steps takes longer).
    Torch's random state is left as it was: how many steps fit in `seconds` varies."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _timed_steps(model, cfg, device, precision, seconds)


def _timed_steps(model: CharLSTM, cfg: TrainConfig, device: torch.device, precision: str,
                 seconds: float) -> float:
    model = model.to(device).train()
    batch_size, seq_len = cfg.batch_size, cfg.seq_len
    x = torch.randint(model.config.vocab_size, (batch_size, seq_len + 1), device=device)

    context = None
    if model.config.conditioned:  # adapters and vectors cost time too: measure them
        context = [torch.randint(max(1, n), (batch_size, seq_len), device=device)
                   for n in (model.config.people, model.config.channels)]

    def step() -> None:
        with _autocast(device, precision):
            logits, _ = model(x[:, :-1], None, *(context or ()))
        F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)
                        ).backward()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    steps, start = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - start < seconds:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        steps += 1
    model.zero_grad(set_to_none=True)
    return steps * batch_size * seq_len / (time.perf_counter() - start)


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over warmup_steps, then cosine from lr to lr × min_lr_ratio as
    `progress` (fraction of the time/step budget used) goes 0 → 1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _anyone(stream: Stream, share: float, rng: np.random.Generator) -> Stream:
    """The stream with a fresh `share` of its messages' authors (and, independently, of
    their channels) replaced by slot 0, "anyone"."""
    if stream.messages is None or share <= 0:
        return stream
    count = int(stream.messages.max()) + 1
    masked = {}
    for key in ("people", "channels"):
        values = getattr(stream, key)
        if values is not None:
            hidden = rng.random(count) < share
            masked[key] = np.where(hidden[stream.messages], 0, values)
    return Stream(stream.ids, masked.get("people"), masked.get("channels"), stream.messages)


def _param_groups(model: CharLSTM, cfg: TrainConfig) -> list[dict[str, Any]]:
    """What is each person's or channel's own (vectors, habits) learns `context_lr_scale` times
    faster than the rest."""
    own = ("people.", "channels.", "habit_out.")
    vectors = [p for name, p in model.named_parameters() if name.startswith(own)]
    rest = [p for name, p in model.named_parameters() if not name.startswith(own)]
    groups = [{"params": rest, "scale": 1.0}]
    if vectors:
        groups.append({"params": vectors, "scale": cfg.context_lr_scale,
                       "weight_decay": cfg.own_decay})
    return groups


def fit(
    model: CharLSTM,
    train_data: Stream | np.ndarray,
    val_data: Stream | np.ndarray,
    cfg: TrainConfig,
    device: torch.device,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> FitResult:
    """Train `model` in place and return the best weights by validation loss.

    Stops at the time or step budget, on early stopping, or on Ctrl-C (KeyboardInterrupt,
    also when raised by on_progress), always returning the best state seen so far; the
    model is left holding those best weights, in eval mode.
    on_progress gets each history row: after every validation (with val_loss) and every
    progress_every_s in between (val_loss None).
    stop_requested is asked before each step: how a worker learns of Ctrl-C (a
    KeyboardInterrupt could leave one rank in the middle of a collective, the others waiting).
    In a process group only rank 0 gets the best weights (others keep their last ones).
    """
    if cfg.max_seconds <= 0 and cfg.max_steps <= 0:
        raise ValueError("set max_seconds or max_steps, or training never ends")
    train_stream, val = Stream.of(train_data), Stream.of(val_data)
    if len(train_stream) < 2 or len(val) < 2:
        raise ValueError("train and validation streams need at least 2 characters each")
    _set_threads(device, cfg.num_threads)
    precision = training_precision(model, cfg, device)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    lead = rank == 0
    torch.manual_seed(cfg.seed + rank)  # dropout: each rank its own masks
    rng = np.random.default_rng(cfg.seed)  # "anyone" messages and phase: the same on all
    model.to(device).train()
    net = model if world == 1 else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    seq_len = max(1, min(cfg.seq_len, len(train_stream) - 1))

    fused = {"fused": True} if device.type in ("cuda", "cpu") else {}
    opt = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr,
                            weight_decay=cfg.weight_decay, **fused)
    result = FitResult(best_state_dict={}, best_val_loss=math.inf, precision=precision)
    start = time.perf_counter()
    train_time = 0.0  # excludes validation, so chars/s measures training alone
    last_eval_t, last_eval_step, last_beat = start, 0, start
    since_best, loss_sum, loss_n = 0, 0.0, 0

    def snapshot(val_loss: float | None, now: float) -> dict[str, Any]:
        return {
            "step": result.steps,
            "seconds": round(now - start, 3),
            "train_loss": loss_sum / loss_n if loss_n else None,
            "val_loss": val_loss,
            "chars_per_s": result.chars_trained / train_time if train_time else 0.0,
            "lr": opt.param_groups[0]["lr"],
        }

    def decide(now: float) -> tuple[float, StopReason | None]:
        """The share of the budget used (it sets the learning rate) and whether to stop:
        rank 0's, on every rank, as clocks differ between processes."""
        elapsed = now - start
        progress = max(
            result.steps / cfg.max_steps if cfg.max_steps else 0.0,
            elapsed / cfg.max_seconds if cfg.max_seconds else 0.0,
        )
        stop: StopReason | None = (
            "early_stop" if since_best >= cfg.patience
            else "max_steps" if cfg.max_steps and result.steps >= cfg.max_steps
            else "budget" if cfg.max_seconds and elapsed >= cfg.max_seconds
            else "interrupted" if stop_requested and stop_requested() else None)
        if world == 1:
            return progress, stop
        shared = torch.tensor([progress, _STOPS.index(stop)], dtype=torch.float64,
                              device=device)
        dist.broadcast(shared, 0)
        return shared[0].item(), _STOPS[int(shared[1].item())]

    def validate() -> None:
        nonlocal since_best, loss_sum, loss_n, last_eval_t, last_eval_step
        val_loss = evaluate(model, val, device, max_chars=cfg.val_max_chars)
        if val_loss < result.best_val_loss - cfg.min_delta or not result.best_state_dict:
            result.best_val_loss = val_loss
            result.best_state_dict = {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            }
            since_best = 0
        else:
            since_best += 1
        now = time.perf_counter()
        result.history.append(snapshot(val_loss, now))
        loss_sum, loss_n = 0.0, 0
        last_eval_t, last_eval_step = now, result.steps
        if on_progress:
            on_progress(result.history[-1])

    try:
        while True:
            # New epoch: fresh state, fresh "anyone" messages, and a random phase so chunk
            # edges move between epochs.
            epoch = _anyone(train_stream, cfg.anyone_share, rng).tensors(device)
            epoch.pop("messages", None)
            lanes = _lanes(epoch, cfg.batch_size, seq_len, int(rng.integers(0, seq_len)))
            if world > 1:
                lanes = _share(lanes, rank, world)
            state: LSTMState | None = None
            for i in range(0, lanes["x"].shape[1], seq_len):
                t0 = time.perf_counter()
                progress, stop = decide(t0)
                if stop:
                    result.stopped_reason = stop
                    raise _Stop
                for group in opt.param_groups:
                    group["lr"] = lr_at(cfg, result.steps, progress) * group["scale"]

                yb = lanes["y"][:, i : i + seq_len]
                with _autocast(device, precision):
                    logits, state = _forward(net, lanes, i, seq_len, state)
                loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), yb.reshape(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
                opt.step()
                state = _detach(state)

                loss_sum += loss.item()  # the sync costs little next to a CPU step
                loss_n += 1
                result.steps += 1
                result.chars_trained += yb.numel() * world
                now = time.perf_counter()
                train_time += now - t0
                if not lead:  # the others wait for rank 0's next decision
                    continue
                due = (cfg.eval_every_s and now - last_eval_t >= cfg.eval_every_s) or (
                    cfg.eval_every_steps and result.steps - last_eval_step >= cfg.eval_every_steps
                )
                if due:
                    validate()  # early stopping, if due, is the next decision
                elif on_progress and now - last_beat >= cfg.progress_every_s:
                    last_beat = now
                    on_progress(snapshot(None, now))
    except _Stop:
        if lead and (last_eval_step != result.steps or not result.best_state_dict):
            try:
                validate()
            except KeyboardInterrupt:
                result.stopped_reason = "interrupted"
    except KeyboardInterrupt:
        result.stopped_reason = "interrupted"
        if not result.best_state_dict:
            # Interrupted before any validation: the current weights are all we have.
            result.best_state_dict = {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            }
            # A second Ctrl-C leaves the loss unknown (inf) rather than hanging on.
            with contextlib.suppress(KeyboardInterrupt):
                result.best_val_loss = evaluate(model, val, device, max_chars=cfg.val_max_chars)
    if lead:
        model.load_state_dict(result.best_state_dict)
    model.eval()
    return result
