"""How should the shared model be conditioned on who writes? Compares variants side by side.

On the chitchat workspace, each variant trains one shared model on every public channel for
the same budget (one process, one CPU thread each, run two at a time), then scores every
covered person on their held-out messages twice: with their own vector and with "anyone".
The gap between the two is what the person's vector knows (../shared/docs/persona-check.md
found none for a 16-dim vector concatenated to the input). Variants are ModelConfig and
TrainConfig overrides, e.g. `concat:rank=0` or `adapters:rank=32,context_lr_scale=10`.

    .venv/bin/python -m bench.conditioning --minutes 8 concat:rank=0 adapters:rank=32
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch

from bench.workspace import chitchat, machine
from mimic.trainer.corpus import load_workspace
from mimic.trainer.device import pick_device
from mimic.trainer.fit import TrainConfig, fit
from mimic.trainer.model import CharLSTM, ModelConfig
from mimic.trainer.shared import encode, score, slots_of, validation_sample
from mimic.trainer.vocab import Vocab

MIN_CHARS = 1_000
GROUPS = {"big 10": (0, 10), "10-30k chars": (10_000, 30_000), "1-5k chars": (1_000, 5_000)}


def parse(variant: str) -> tuple[str, dict[str, float]]:
    name, _, rest = variant.partition(":")
    values = dict(kv.split("=") for kv in rest.split(",") if kv)
    return name, {k: float(v) for k, v in values.items()}


def run_variant(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    name, overrides = parse(args.variant)
    store, settings = chitchat(args.folder, refresh=False, MIMIC_DEVICE="cpu")
    device = pick_device("cpu")
    with store.session() as session:
        workspace = load_workspace(session, settings, MIN_CHARS)
    vocab = Vocab.build(m.text for m in workspace.train)
    slots = slots_of(workspace)
    model_keys = {f.name for f in fields(ModelConfig)}
    config = ModelConfig(len(vocab), people=len(slots.people) + 1,
                         channels=len(slots.channels) + 1,
                         **{k: int(v) if k != "dropout" else v for k, v in overrides.items()
                            if k in model_keys})
    cfg = TrainConfig(max_seconds=60 * args.minutes, num_threads=1,
                      **{k: v for k, v in overrides.items() if k not in model_keys})
    torch.manual_seed(0)
    model = CharLSTM(config)
    started = time.perf_counter()
    result = fit(model, encode(vocab, slots, workspace.train),
                 encode(vocab, slots, validation_sample(workspace, 2 * cfg.val_max_chars)),
                 cfg, device)
    trained = time.perf_counter() - started
    people = [f"user:{p}" for p in workspace.people]
    scores = score(model, vocab, slots, workspace, people, device)
    (args.folder / f"conditioning-{name}.json").write_text(json.dumps({
        "variant": args.variant, "train_seconds": trained, "steps": result.steps,
        "chars": result.chars_trained, "params": sum(p.numel() for p in model.parameters()),
        "scores": scores, "sizes": {k: workspace.chars[k] for k in people}}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs="+", help="NAME:key=value,... (ModelConfig/TrainConfig)")
    p.add_argument("--minutes", type=float, default=8.0, help="training budget per variant")
    p.add_argument("--folder", type=Path, default=Path("data/bench/quality"))
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        run_variant(args)
        return
    print(f"machine: {machine()}")
    chitchat(args.folder)
    command = [sys.executable, "-m", "bench.conditioning", "--minutes", str(args.minutes),
               "--folder", str(args.folder), "x", "--variant"]
    for start in range(0, len(args.variants), 2):  # two at a time: one per core
        running = [subprocess.Popen([*command, v]) for v in args.variants[start:start + 2]]
        if any(proc.wait() for proc in running):
            sys.exit("a variant failed; see above")
    print(f"\n{'variant':<34}{'steps':>7}{'group':>14}{'n':>5}{'own':>8}{'anyone':>8}{'gap':>7}")
    for variant in args.variants:
        name = parse(variant)[0]
        result = json.loads((args.folder / f"conditioning-{name}.json").read_text())
        ranked = sorted(result["sizes"], key=lambda k: -result["sizes"][k])
        for group, (low, high) in GROUPS.items():
            keys = ranked[low:high] if group == "big 10" else [
                k for k in ranked if low <= result["sizes"][k] <= high]
            pairs = [result["scores"][k][1:] for k in keys if result["scores"][k][1] is not None]
            own = statistics.mean(a for a, _ in pairs)
            anyone = statistics.mean(b for _, b in pairs)
            print(f"{variant:<34}{result['steps']:>7}{group:>14}{len(pairs):>5}{own:>8.3f}"
                  f"{anyone:>8.3f}{anyone - own:>7.3f}")
        every = [v[1] for v in result["scores"].values() if v[1] is not None]
        print(f"{'':<34}{'':>7}{'every person':>14}{len(every):>5}"
              f"{statistics.mean(every):>8.3f}")


if __name__ == "__main__":
    main()
