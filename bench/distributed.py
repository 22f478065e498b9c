"""Training in N torchrun workers against one process, side by side: chars/s and the
validation loss after the same steps on the same global batch.

On the chitchat workspace, the shared model (conditioned as `mimic train` conditions it, 2 x 256
unless --hidden/--layers) is trained from the same first weights for --steps steps of the
default global batch: in one process with every core, then in --nproc workers (the cores
shared out on a CPU; one GPU each with --device cuda). Each run validates once, at the end, on
the same held-out sample.

    .venv/bin/python -m bench.distributed [--nproc 2] [--steps 300]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.workspace import chitchat, machine
from mimic.trainer.corpus import load_workspace
from mimic.trainer.device import pick_device
from mimic.trainer.distributed import fit_parallel
from mimic.trainer.fit import TrainConfig, evaluate
from mimic.trainer.model import CharLSTM, param_count, size_for
from mimic.trainer.shared import encode, slots_of, validation_sample
from mimic.trainer.train import CONDITIONING
from mimic.trainer.vocab import Vocab


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2, help="workers to compare with one (2)")
    p.add_argument("--steps", type=int, default=300, help="training steps of each run (300)")
    p.add_argument("--hidden", type=int, default=256, help="LSTM hidden size (256)")
    p.add_argument("--layers", type=int, default=2, help="LSTM layers (2)")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument("--folder", type=Path, default=Path("data/bench/distributed"))
    args = p.parse_args()
    print(f"machine: {machine()}")
    store, settings = chitchat(args.folder, MIMIC_DEVICE=args.device)
    device = pick_device(settings.device)
    with store.session() as session:
        workspace = load_workspace(session, settings, settings.min_chars)
    slots = slots_of(workspace)
    vocab = Vocab.build(m.text for m in workspace.train)
    train_stream = encode(vocab, slots, workspace.train)
    cfg = TrainConfig(max_seconds=0, max_steps=args.steps, eval_every_s=0)
    held = encode(vocab, slots, validation_sample(workspace, 2 * cfg.val_max_chars))
    config = size_for(workspace.train_chars, len(vocab), people=len(slots.people) + 1,
                      channels=len(slots.channels) + 1, hidden_size=args.hidden,
                      num_layers=args.layers, **CONDITIONING)
    print(f"chitchat: {len(train_stream):,} training chars, {len(held):,} held out; model "
          f"{config.num_layers} x {config.hidden_size}, {param_count(config):,} parameters; "
          f"{args.steps} steps of {cfg.batch_size} lanes x {cfg.seq_len} chars")
    for nproc in (1, args.nproc):
        torch.manual_seed(0)  # the same first weights
        model = CharLSTM(config)
        start = time.perf_counter()
        result = fit_parallel(model, train_stream, held, cfg, device, nproc=nproc)
        wall = time.perf_counter() - start
        loss = evaluate(model, held, device)
        print(f"{nproc} process(es): {result.steps} steps, "
              f"{result.history[-1]['chars_per_s']:,.0f} chars/s training, {wall:.1f} s wall "
              f"(with start-up and validation), validation loss {loss:.4f} nats/char")


if __name__ == "__main__":
    main()
