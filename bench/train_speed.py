"""How close does training get to the machine's matmul rate? And how fast is sampling?

Trains a default-size char-LSTM for a few seconds on real text (the Python standard
library's source lines as "messages", or --text FILE, one message per line) and compares
the FLOP rate it implies with a large float32 matmul measured in the same run.

    .venv/bin/python bench/train_speed.py --seconds 25
"""

from __future__ import annotations

import argparse
import os
import platform
import sysconfig
import time
from pathlib import Path

import torch

from mimic.trainer.device import pick_device
from mimic.trainer.fit import TrainConfig, fit
from mimic.trainer.model import CharLSTM, flops_per_char, param_count, size_for
from mimic.trainer.sampler import sample
from mimic.trainer.vocab import Vocab


def load_messages(path: str | None, limit: int) -> list[str]:
    files = [Path(path)] if path else sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    messages, total = [], 0
    for f in files:
        for line in f.read_text(errors="replace").splitlines():
            if line.strip():
                messages.append(line[:280])
                total += len(messages[-1]) + 1
                if total >= limit:
                    return messages
    return messages


def matmul_gflops(device: torch.device, n: int = 2048, seconds: float = 2.0) -> float:
    """float32 on a CPU; bf16 on a GPU, the precision training's autocast uses there."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 8192 if device.type == "cuda" else n
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    torch.mm(a, b)  # warm up
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--seconds", type=float, default=25.0, help="training time (default 25)")
    p.add_argument("--hidden", type=int, help="LSTM hidden size (default: size_for the text)")
    p.add_argument("--layers", type=int, help="LSTM layers (default: size_for the text)")
    p.add_argument("--batch", type=int, help="lanes per batch (default: TrainConfig's)")
    p.add_argument("--seq", type=int, help="TBPTT chunk length (default: TrainConfig's)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default 0 = all)")
    p.add_argument("--chars", type=int, default=1_100_000, help="corpus size (default 1.1M)")
    p.add_argument("--text", help="a text file to train on, one message per line")
    args = p.parse_args()

    device = pick_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )

    messages = load_messages(args.text, args.chars)
    split = int(len(messages) * 0.95)
    vocab = Vocab.build(messages[:split])
    train_ids = vocab.encode_corpus(messages[:split])
    val_ids = vocab.encode_corpus(messages[split:])
    overrides = {k: v for k, v in (("hidden_size", args.hidden), ("num_layers", args.layers)) if v}
    mcfg = size_for(len(train_ids), len(vocab), **overrides)
    cfg = TrainConfig(max_seconds=args.seconds, eval_every_s=0, num_threads=args.threads)
    if args.batch:
        cfg.batch_size = args.batch
    if args.seq:
        cfg.seq_len = args.seq
    print(f"corpus: {len(train_ids):,} train / {len(val_ids):,} val chars, vocab {len(vocab)}")
    print(
        f"model: {mcfg.num_layers}x{mcfg.hidden_size} embed {mcfg.embed_dim}, "
        f"{param_count(mcfg):,} params; batch {cfg.batch_size} x seq {cfg.seq_len}"
    )

    gflops = matmul_gflops(device)
    model = CharLSTM(mcfg)
    result = fit(model, train_ids, val_ids, cfg, device)
    # Skip the first steps (thread pools, allocator warm-up) by measuring from the history.
    cps = result.history[-1]["chars_per_s"]
    train_gflops = cps * 3 * flops_per_char(mcfg) / 1e9
    print(
        f"train: {result.steps} steps, {result.chars_trained:,} chars in {args.seconds:.0f}s "
        f"-> {cps:,.0f} chars/s, val loss {result.best_val_loss:.3f} nats/char"
    )
    print(
        f"flops: {flops_per_char(mcfg) * 3 / 1e6:.2f} MFLOP/char trained "
        f"-> {train_gflops:.1f} GFLOP/s vs matmul {gflops:.1f} GFLOP/s "
        f"= ratio {train_gflops / gflops:.2f}"
    )

    model = model.to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    for label, stop in (("to EOM", True), ("full 280", False)):
        times = []
        for _ in range(5):
            t = time.perf_counter()
            texts = sample(
                model, vocab, n=4, max_len=280, generator=gen, device=device, stop_at_eom=stop
            )
            times.append(time.perf_counter() - t)
        chars = sum(len(x) for x in texts)
        print(
            f"sample 4 x 280 ({label}): median {sorted(times)[2] * 1e3:.0f} ms "
            f"({chars} chars in the last draw)"
        )
    print(f"example: {texts[0][:120]!r}")


if __name__ == "__main__":
    main()
