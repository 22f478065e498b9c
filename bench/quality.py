"""Held-out loss per CPU budget: base + fine-tune against per-target models from scratch.

On the chitchat workspace, for the 10 biggest senders and 5 senders with 10-30k characters,
two arms run side by side, each a process on ONE CPU thread for the same wall-clock budget
(default 30 minutes each, i.e. 30 CPU-minutes):

  (a) scratch:   each target trained alone from a fresh net (size by the trainer's rule);
                 then one user with the seeds' seq-to-one sliding-window recipe, same budget.
  (b) finetune:  the workspace base model, then each target fine-tuned from it, through the
                 trainer's own `train()` (registry, novelty index and all).

Every loss is `trainer.fit.evaluate` on the target's own validation set (its newest 10%),
in nats/char, with one vocabulary for all. Goal for (b): mean <= 1.45 on the big 10 and
<= 1.55 on the small 5. Arm (b)'s models stay in the folder for `mimic eval`:

    .venv/bin/python -m bench.quality                     # ~32 minutes on 2 cores
    DATABASE_URL=sqlite:///data/bench/quality/mimic.db MIMIC_DATA_DIR=data/bench/quality \\
        .venv/bin/mimic eval
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.workspace import chitchat, machine
from mimic.core.config import Settings
from mimic.core.store import Store
from mimic.trainer.corpus import BASE, Target, corpus_chars, load_corpus, targets_with_data
from mimic.trainer.device import pick_device
from mimic.trainer.fit import TrainConfig, evaluate, fit
from mimic.trainer.model import CharLSTM
from mimic.trainer.registry import delete_target
from mimic.trainer.train import affordable_size, train
from mimic.trainer.vocab import Vocab

BIG, SMALL, SMALL_RANGE = 10, 5, (10_000, 30_000)
GOALS = {"big": 1.45, "small": 1.55}
BASE_SHARE = 0.47  # of arm (b)'s budget; the fine-tunes share 0.45, the rest is overhead
TARGETS_SHARE = 0.45
SCRATCH_SHARE = 0.88  # of arm (a)'s budget, split over its 15 targets and the seq-to-one run
WINDOW = 100  # the seeds' seq-to-one recipe: 100 characters in, the next one out


def pick_targets(store: Store, settings: Settings) -> dict[str, list[Target]]:
    with store.session() as session:
        people = [t for t in targets_with_data(session, settings, 1) if t.kind == "user"]
        sized = [(t, corpus_chars(session, settings, t)) for t in people[:400]]
    small = [t for t, n in sized if SMALL_RANGE[0] <= n <= SMALL_RANGE[1]]
    # Spread over the range rather than the 5 just under 30k.
    step = max(1, len(small) // SMALL)
    return {"big": people[:BIG], "small": small[::step][:SMALL]}


def workspace_vocab(store: Store, settings: Settings) -> Vocab:
    """The vocabulary the base model would get: arm (a) uses the same, so losses compare."""
    with store.session() as session:
        return Vocab.build(load_corpus(session, settings, BASE).train)


def seq_to_one(model: CharLSTM, train_ids: np.ndarray, val_ids: np.ndarray, seconds: float,
               device: torch.device, batch: int = 128) -> float:
    """The seeds' recipe: random 100-char windows, loss on the one next character only."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    ids = torch.as_tensor(train_ids)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        starts = torch.as_tensor(rng.integers(0, len(ids) - WINDOW - 1, batch))
        windows = ids[starts[:, None] + torch.arange(WINDOW + 1)]
        logits, _ = model(windows[:, :-1].to(device))
        loss = F.cross_entropy(logits[:, -1].float(), windows[:, -1].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return evaluate(model, val_ids, device)


def arm_scratch(store: Store, settings: Settings, targets: list[Target], minutes: float,
                threads: int) -> dict:
    device = pick_device(settings.device)
    vocab = workspace_vocab(store, settings)
    each = 60 * minutes * SCRATCH_SHARE / (len(targets) + 1)
    cfg = TrainConfig(max_seconds=each, num_threads=threads)
    losses, sizes = {}, {}
    for target in targets:
        with store.session() as session:
            corpus = load_corpus(session, settings, target)
        train_ids, val_ids = vocab.encode_corpus(corpus.train), vocab.encode_corpus(corpus.val)
        config = affordable_size(corpus.chars, len(vocab), cfg, device)
        model = CharLSTM(config)
        fit(model, train_ids, val_ids, cfg, device)
        losses[target.key] = evaluate(model, val_ids, device)
        sizes[target.key] = f"{config.num_layers}x{config.hidden_size}"
        print(f"scratch {target.label}: {losses[target.key]:.3f} ({sizes[target.key]})",
              flush=True)
    first = targets[0]
    with store.session() as session:
        corpus = load_corpus(session, settings, first)
    train_ids, val_ids = vocab.encode_corpus(corpus.train), vocab.encode_corpus(corpus.val)
    config = affordable_size(corpus.chars, len(vocab), cfg, device)
    reference = seq_to_one(CharLSTM(config), train_ids, val_ids, each, device)
    print(f"seq-to-one {first.label}: {reference:.3f}", flush=True)
    return {"losses": losses, "sizes": sizes, "seconds_each": each,
            "reference": {"target": first.key, "loss": reference}}


def arm_finetune(store: Store, settings: Settings, targets: list[Target], minutes: float,
                 threads: int) -> dict:
    for target in [BASE, *targets]:  # a fresh registry: every run measures the same thing
        delete_target(store, settings.data_dir, target)
    one_thread = {"num_threads": threads}
    base = train(store, settings, BASE, minutes=minutes * BASE_SHARE,
                 train_overrides=one_thread)
    print(f"base: {base.describe()}", flush=True)
    each = minutes * TARGETS_SHARE / len(targets)
    losses = {}
    for target in targets:
        outcome = train(store, settings, target, minutes=each, train_overrides=one_thread)
        losses[target.key] = outcome.val_after
        print(f"finetune {outcome.describe()}", flush=True)
    return {"losses": losses, "base_loss": base.val_after, "seconds_each": 60 * each}


def run_arm(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    store, settings = chitchat(args.folder, refresh=False, MIMIC_DEVICE="cpu")
    chosen = json.loads((args.folder / "targets.json").read_text())
    targets = [Target(t["key"], t["label"]) for t in chosen["big"] + chosen["small"]]
    start = time.perf_counter()
    arm = {"scratch": arm_scratch, "finetune": arm_finetune}[args.arm]
    result = arm(store, settings, targets, args.minutes, args.threads)
    result["wall_seconds"] = time.perf_counter() - start
    (args.folder / f"result-{args.arm}.json").write_text(json.dumps(result, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0,
                   help="each arm's budget in minutes of one CPU thread (default 30)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per arm (default 1)")
    p.add_argument("--folder", type=Path, default=Path("data/bench/quality"),
                   help="workspace and arm (b)'s models (default data/bench/quality)")
    p.add_argument("--arm", choices=("scratch", "finetune"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.arm:
        run_arm(args)
        return

    print(f"machine: {machine()}")
    store, settings = chitchat(args.folder)
    chosen = pick_targets(store, settings)
    with store.session() as session:
        sizes = {t.key: corpus_chars(session, settings, t)
                 for t in chosen["big"] + chosen["small"]}
    (args.folder / "targets.json").write_text(json.dumps(
        {group: [{"key": t.key, "label": t.label} for t in ts] for group, ts in chosen.items()}))
    print(f"targets: {BIG} biggest senders and {SMALL} with {SMALL_RANGE[0]:,}-"
          f"{SMALL_RANGE[1]:,} chars; each arm {args.minutes:g} min on {args.threads} thread(s)")
    base = [sys.executable, "-m", "bench.quality", "--minutes", str(args.minutes), "--threads",
            str(args.threads), "--folder", str(args.folder), "--arm"]
    arms = {name: subprocess.Popen([*base, name]) for name in ("scratch", "finetune")}
    if any(proc.wait() for proc in arms.values()):
        sys.exit("an arm failed; see its output above")
    results = {name: json.loads((args.folder / f"result-{name}.json").read_text())
               for name in arms}

    print(f"\n{'target':<28}{'chars':>10}{'(a) scratch':>14}{'(b) base+ft':>14}")
    means: dict[str, dict[str, float]] = {}
    for group, targets in chosen.items():
        rows = {arm: [results[arm]["losses"][t.key] for t in targets] for arm in arms}
        for i, t in enumerate(targets):
            print(f"{t.label:<28}{sizes[t.key]:>10,}{rows['scratch'][i]:>14.3f}"
                  f"{rows['finetune'][i]:>14.3f}")
        means[group] = {arm: float(np.mean(v)) for arm, v in rows.items()}
    print()
    for group, goal in GOALS.items():
        m = means[group]
        verdict = "goal met" if m["finetune"] <= goal else "GOAL MISSED"
        print(f"mean, {group:<5}: (a) {m['scratch']:.3f}  (b) {m['finetune']:.3f}  "
              f"(goal <= {goal}: {verdict})")
    ref = results["scratch"]["reference"]
    label = next(t.label for t in chosen["big"] if t.key == ref["target"])
    print(f"seq-to-one reference on {label}: {ref['loss']:.3f} vs (a) "
          f"{results['scratch']['losses'][ref['target']]:.3f} and (b) "
          f"{results['finetune']['losses'][ref['target']]:.3f}, same budget per model")
    print(f"base model alone: {results['finetune']['base_loss']:.3f} on its validation set")
    for name, r in results.items():
        print(f"arm {name}: {r['wall_seconds'] / 60:.1f} min wall on {args.threads} thread(s)")


if __name__ == "__main__":
    main()
