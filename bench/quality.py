"""Held-out loss per CPU budget: base + fine-tunes (the old design) against one conditioned
workspace model (the new one), side by side, on the same targets and validation sets.

On the chitchat workspace, two arms run at once, each a process on ONE CPU thread for the same
budget (default 30 minutes each, i.e. 30 CPU-minutes):

  (b) finetune:    an unconditioned workspace base model on every public channel, then each of
                   the 15 targets fine-tuned from it (the design before issue 12);
  (c) conditioned: the trainer's own shared model (`train(BASE)`: one char-LSTM for everyone
                   with MIMIC_MIN_CHARS, conditioned on who writes and where), registry,
                   coverage, novelty index and lexicon included, all inside the budget.

Targets: the 10 biggest senders and 5 with 10-30k characters; every loss is nats/char on the
target's own newest 10 % (`trainer.fit.evaluate`, the same characters for both arms). Arm (c)
is also scored on every person it covers, with its own and with the "anyone" vector, and with
each held-out message read after the messages that came before it in its channel (does a
conversation's context help?). Its model stays in the folder for `mimic eval`:

    .venv/bin/python -m bench.quality                     # ~35 minutes on 2 cores
    DATABASE_URL=sqlite:///data/bench/quality/mimic.db MIMIC_DATA_DIR=data/bench/quality \\
        .venv/bin/mimic eval
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench.workspace import chitchat, machine
from mimic.core.config import Settings
from mimic.core.store import Store
from mimic.trainer.corpus import (
    BASE,
    Said,
    Target,
    Workspace,
    corpus_chars,
    load_corpus,
    load_workspace,
    targets_with_data,
)
from mimic.trainer.device import pick_device
from mimic.trainer.fit import TrainConfig, evaluate, fit
from mimic.trainer.model import CharLSTM, Slots, load_model
from mimic.trainer.registry import WEIGHTS, active_version, delete_target, version_dir
from mimic.trainer.sampler import CONTEXT_MESSAGES
from mimic.trainer.shared import loss_on
from mimic.trainer.train import FINE_TUNE, affordable_size, train
from mimic.trainer.vocab import Vocab

BIG, SMALL, SMALL_RANGE = 10, 5, (10_000, 30_000)
GOALS = {"big": 1.30, "small": 1.33, "every": 1.45}
BASE_SHARE = 0.47  # arm (b): of its budget; the fine-tunes share 0.45, the rest is overhead
TARGETS_SHARE = 0.45
SHARED_SHARE = 0.88  # arm (c): of its budget for fitting; scoring and publishing take the rest


def pick_targets(store: Store, settings: Settings) -> dict[str, list[Target]]:
    with store.session() as session:
        people = [t for t in targets_with_data(session, settings, 1) if t.kind == "user"]
        sized = [(t, corpus_chars(session, settings, t)) for t in people[:400]]
    small = [t for t, n in sized if SMALL_RANGE[0] <= n <= SMALL_RANGE[1]]
    step = max(1, len(small) // SMALL)  # spread over the range, not the 5 just under 30k
    return {"big": people[:BIG], "small": small[::step][:SMALL]}


def arm_finetune(store: Store, settings: Settings, targets: list[Target], minutes: float,
                 threads: int) -> dict:
    """The old design, rebuilt here from the trainer's parts (it is no longer a job of its
    own): an unconditioned base on the public channels, then a fine-tune per target."""
    device = pick_device("cpu")
    with store.session() as session:
        workspace = load_workspace(session, settings, settings.min_chars)
        corpora = {t.key: load_corpus(session, settings, t) for t in targets}
    texts = [m.text for m in workspace.train]
    vocab = Vocab.build(texts)
    held = [m.text for messages in workspace.val.values() for m in messages]
    cfg = TrainConfig(max_seconds=60 * minutes * BASE_SHARE, num_threads=threads)
    base = CharLSTM(affordable_size(sum(len(t) + 1 for t in texts), len(vocab), cfg, device))
    fit(base, vocab.encode_corpus(texts), vocab.encode_corpus(held[::7]), cfg, device)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    each = replace(TrainConfig(max_seconds=60 * minutes * TARGETS_SHARE / len(targets),
                               num_threads=threads), **FINE_TUNE)
    losses, base_losses = {}, {}
    for target in targets:
        corpus = corpora[target.key]
        val = vocab.encode_corpus(corpus.val)
        base_losses[target.key] = evaluate(base, val, device)
        model = CharLSTM(base.config)
        model.load_state_dict(base_state)
        fit(model, vocab.encode_corpus(corpus.train), val, each, device)
        losses[target.key] = evaluate(model, val, device)
        print(f"finetune {target.label}: {losses[target.key]:.3f}", flush=True)
    return {"losses": losses, "base_losses": base_losses, "size": str(base.config)}


def timelines(workspace: Workspace) -> dict[str, list[Said]]:
    """Each channel's messages (trained on and held out), oldest first."""
    by_channel: dict[str, list[Said]] = {}
    for m in sorted([*workspace.train, *{m for v in workspace.val.values() for m in v}],
                    key=lambda m: float(m.ts)):
        by_channel.setdefault(m.channel, []).append(m)
    return by_channel


def context_loss(model: CharLSTM, vocab: Vocab, slots: Slots, key: str,
                 messages: list[Said], by_channel: dict[str, list[Said]],
                 limit: int = 60, cuts: tuple[int | None, ...] = (0, None)
                 ) -> tuple[float, ...]:
    """The loss over up to `limit` held-out messages of a person, once per cut: each message
    read after at most that many of the newest characters of the CONTEXT_MESSAGES messages
    that came before it in its channel, laid out as a reply reads them (0: alone after an end
    mark; None: all of them); only the message's own characters count."""
    person = slots.person(key.split(":", 1)[1])
    sums = [0.0] * len(cuts)
    count = 0
    for message in messages[-limit:]:
        channel = by_channel[message.channel]
        index = next(i for i, m in enumerate(channel) if m.ts == message.ts)
        ids, people, channels = [], [], []
        for m in channel[max(0, index - CONTEXT_MESSAGES):index]:
            encoded = [vocab.eom, *vocab.encode(m.text)]
            ids += encoded
            # Position t is conditioned on the author of the character it predicts (its
            # last predicts the end mark that closes the message: still theirs).
            people += [slots.person(m.user)] * len(encoded)
            channels += [slots.channel(m.channel)] * len(encoded)
        encoded = [vocab.eom, *vocab.encode(message.text), vocab.eom]
        for which, cut in enumerate(cuts):
            keep = len(ids) if cut is None else min(cut, len(ids))
            start = len(ids) - keep
            x = ids[start:] + encoded[:-1]
            who = people[start:] + [person] * (len(encoded) - 1)
            where = channels[start:] + [slots.channel(message.channel)] * (len(encoded) - 1)
            with torch.inference_mode():
                logits, _ = model(torch.tensor([x]), None, torch.tensor([who]),
                                  torch.tensor([where]))
            logp = torch.log_softmax(logits[0, keep:].float(), -1)
            target = torch.tensor(encoded[1:])
            sums[which] -= logp[torch.arange(len(target)), target].sum().item()
        count += len(message.text) + 1
    return tuple(total / count for total in sums)


def arm_conditioned(store: Store, settings: Settings, targets: list[Target], minutes: float,
                    threads: int) -> dict:
    delete_target(store, settings.data_dir, BASE)  # a fresh registry: the same thing each run
    start = time.perf_counter()
    outcome = train(store, settings, BASE, minutes=minutes * SHARED_SHARE,
                    train_overrides={"num_threads": threads}, fresh=True)
    seconds = time.perf_counter() - start
    print(f"conditioned: {outcome.describe()} in {seconds / 60:.1f} min", flush=True)
    device = pick_device("cpu")
    with store.session() as session:
        row = active_version(session, BASE.key)
        assert row is not None
        model, vocab, slots = load_model(version_dir(settings.data_dir, row) / WEIGHTS, device)
        workspace = load_workspace(session, settings, settings.min_chars)
        corpora = {t.key: load_corpus(session, settings, t) for t in targets}
    assert vocab is not None
    losses, anyone, context = {}, {}, {}
    for target in targets:
        val = corpora[target.key].val_said
        losses[target.key] = loss_on(model, vocab, slots, target.key, val, device)
        anyone[target.key] = loss_on(model, vocab, slots, target.key, val, device,
                                     anyone=True)
    by_channel = timelines(workspace)
    for target in targets:
        context[target.key] = context_loss(model, vocab, slots, target.key,
                                           workspace.val[target.key], by_channel)
    every = {}
    for person in workspace.people:  # every covered person, their whole held-out set
        key = f"user:{person}"
        every[key] = (workspace.chars[key],
                      loss_on(model, vocab, slots, key, workspace.val[key], device),
                      loss_on(model, vocab, slots, key, workspace.val[key], device,
                              anyone=True))
    return {"losses": losses, "anyone": anyone, "context": context, "every": every,
            "train_seconds": seconds, "size": str(model.config),
            "covered": [len(workspace.people), len(workspace.channels)]}


def run_arm(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    store, settings = chitchat(args.folder, refresh=False, MIMIC_DEVICE="cpu")
    chosen = json.loads((args.folder / "targets.json").read_text())
    targets = [Target(t["key"], t["label"]) for t in chosen["big"] + chosen["small"]]
    start = time.perf_counter()
    arm = {"finetune": arm_finetune, "conditioned": arm_conditioned}[args.arm]
    result = arm(store, settings, targets, args.minutes, args.threads)
    result["wall_seconds"] = time.perf_counter() - start
    (args.folder / f"result-{args.arm}.json").write_text(json.dumps(result, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0,
                   help="each arm's budget in minutes of one CPU thread (default 30)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per arm (default 1)")
    p.add_argument("--folder", type=Path, default=Path("data/bench/quality"),
                   help="workspace and arm (c)'s model (default data/bench/quality)")
    p.add_argument("--arm", choices=("finetune", "conditioned"), help=argparse.SUPPRESS)
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
    arms = {name: subprocess.Popen([*base, name]) for name in ("finetune", "conditioned")}
    if any(proc.wait() for proc in arms.values()):
        sys.exit("an arm failed; see its output above")
    results = {name: json.loads((args.folder / f"result-{name}.json").read_text())
               for name in arms}
    b, c = results["finetune"], results["conditioned"]

    print(f"\n{'target':<26}{'chars':>10}{'(b) base+ft':>13}{'(c) own':>9}{'anyone':>8}"
          f"{'no ctx':>8}{'in ctx':>8}")
    means: dict[str, dict[str, float]] = {}
    for group, targets in chosen.items():
        for t in targets:
            no_ctx, in_ctx = c["context"][t.key]
            print(f"{t.label:<26}{sizes[t.key]:>10,}{b['losses'][t.key]:>13.3f}"
                  f"{c['losses'][t.key]:>9.3f}{c['anyone'][t.key]:>8.3f}{no_ctx:>8.3f}"
                  f"{in_ctx:>8.3f}")
        means[group] = {arm: float(np.mean([r["losses"][t.key] for t in targets]))
                        for arm, r in (("b", b), ("c", c))}
    every = [own for _chars, own, _anyone in c["every"].values()]
    gaps = [anyone - own for _chars, own, anyone in c["every"].values()]
    means["every"] = {"c": statistics.mean(every)}
    print()
    for group, goal in GOALS.items():
        m = means[group]
        verdict = "goal met" if m["c"] <= goal else "GOAL MISSED"
        old = f"(b) {m['b']:.3f}  " if "b" in m else ""
        print(f"mean, {group:<5}: {old}(c) {m['c']:.3f}  (goal <= {goal}: {verdict})")
    print(f"every covered person ({len(every)}): own vector {statistics.mean(every):.3f}, gap "
          f"to anyone {statistics.mean(gaps):+.3f} (median {statistics.median(gaps):+.3f})")
    contexts = list(c["context"].values())
    print(f"15 targets' held-out messages alone {statistics.mean(x for x, _ in contexts):.3f}, "
          f"after {CONTEXT_MESSAGES} messages of their channel "
          f"{statistics.mean(y for _, y in contexts):.3f}")
    print(f"covered: {c['covered'][0]} people, {c['covered'][1]} channels; (c) size "
          f"{c['size']}; trained and published in {c['train_seconds'] / 60:.1f} min")
    for name, r in results.items():
        print(f"arm {name}: {r['wall_seconds'] / 60:.1f} min wall on {args.threads} thread(s)")


if __name__ == "__main__":
    main()
