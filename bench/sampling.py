"""The sampler's cost per character: milliseconds a step of `Generation` takes with 1, 5, 20
and 40 replies in the batch (each row drawn against "anyone", the word guard on, after the
person's last messages), on the workspace model `bench.quality` trained. With `--against REV`,
the sampler of git revision REV is loaded beside today's and both are measured in turn in one
run (best of four), so the ratio is not the machine's mood. Today's is measured with float
weights too ("float": `INT8` off), and what the int8 products cost in quality is printed: the
loss of the people's 10 latest messages (held out from training), read through each step.

Then whole replies as the latency bench asks for them (rounds of 20 people, 100 in turn, each
round's 20 drawn together to their ends): the sampler's CPU a reply with the word guard's
blocks for the commonest word states (trainer/lexicon.py, HOT_STATES) and without, each arm
with a guard of its own, in turn, from the same seed: the texts must come out the same.

    .venv/bin/python -m bench.sampling [--against b4151a0^]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

from bench.workspace import chitchat, machine
from mimic.bot.models import ModelCache
from mimic.core.config import Settings
from mimic.core.store import Store
from mimic.trainer import sampler
from mimic.trainer.corpus import BASE, recent
from mimic.trainer.lexicon import HOT_STATES, WordGuard
from mimic.trainer.registry import LoadedModel, active_version
from mimic.trainer.report import covered_people
from mimic.trainer.sampler import Voice

SIZES = (1, 5, 20, 40)


def sampler_at(revision: str) -> ModuleType:
    """trainer/sampler.py as it was at `revision`, as a module of its own."""
    source = subprocess.run(["git", "show", f"{revision}:trainer/sampler.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "sampler_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("sampler_then", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look themselves up there)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=Path("data/bench/quality"))
    p.add_argument("--against", metavar="REV", help="also measure the sampler of this git "
                   "revision, in turn with today's")
    p.add_argument("--steps", type=int, default=60, help="steps timed per measurement")
    args = p.parse_args()
    torch.set_num_threads(1)  # as `mimic serve` runs it
    print(f"machine: {machine()}")
    store, settings = chitchat(args.folder, MIMIC_DEVICE="cpu")
    with store.session() as session:
        row = active_version(session, BASE.key)
        if row is None:
            sys.exit("no workspace model here: run `python -m bench.quality` first")
        session.expunge(row)
    loaded = ModelCache(settings.data_dir).get(row)
    people = [t for t, _chars in covered_people(store, settings)][: max(SIZES)]
    with store.session() as session:
        rows = [loaded.row(t.key, context=recent(session, settings, t, 3)) for t in people]
    modules = {"float": sampler, "now": sampler}
    if args.against:
        modules = {args.against: sampler_at(args.against), **modules}
    int8 = sampler.INT8
    best: dict[tuple[str, int], float] = {}
    for _round in range(4):
        for name, module in modules.items():
            sampler.INT8 = int8 and name != "float"
            for n in SIZES:
                batch = module.Generation(loaded.model, loaded.vocab, reference=loaded.reference,
                                          guard=loaded.guard, stop_at_eom=False,
                                          primer=loaded.primer)
                batch.add(rows[:n])
                for _ in range(3):  # warm
                    batch.step()
                start = time.perf_counter()
                for _ in range(args.steps):
                    batch.step()
                took = (time.perf_counter() - start) / args.steps
                best[name, n] = min(best.get((name, n), took), took)
    print("replies in the batch  " + "  ".join(f"{n:>6}" for n in SIZES) + "   (ms a character)")
    for name in modules:
        print(f"{name:<21} " + "  ".join(f"{best[name, n] * 1e3:6.2f}" for n in SIZES))
    for other in [args.against] if args.against else ["float"]:
        print(f"{'now / ' + other:<21} " + "  ".join(
            f"{best['now', n] / best[other, n]:6.2f}" for n in SIZES))
    with store.session() as session:
        held_out = [(loaded.voice(t.key), [m for _a, m in recent(session, settings, t, 10)])
                    for t in people]
    losses = {name: held_out_loss(loaded, held_out, flag)
              for name, flag in (("float", False), ("int8", True))}
    print(f"loss of {len(people)} people's 10 latest messages read one step at a time: float "
          f"{losses['float'][0]:.4f}, int8 {losses['int8'][0]:.4f} nats/char over "
          f"{losses['float'][1]:,} characters")
    people_in_turn(store, settings, loaded)


def people_in_turn(store: Store, settings: Settings, loaded: LoadedModel, rounds: int = 20,
                   width: int = 20, people: int = 100, repeats: int = 3) -> None:
    """The sampler's CPU a whole reply, the word guard's blocks on and off (see the module
    docstring); the guard's build time, and the texts' equality."""
    targets = [t for t, _chars in covered_people(store, settings)][:people]
    with store.session() as session:
        rows = [loaded.row(t.key, context=recent(session, settings, t, 3)) for t in targets]
    guard = loaded.guard
    assert guard is not None and guard.wording is not None, "a model with counted words"
    took: dict[str, list[tuple[float, float]]] = {"blocks": [], "one state at a time": []}
    built, texts = [], {}
    for _repeat in range(repeats):
        for arm, hot in (("blocks", HOT_STATES), ("one state at a time", 0)):
            start = time.thread_time()
            fresh = WordGuard(guard.lexicon, loaded.vocab, guard.wording, hot=hot)
            if hot:
                built.append(time.thread_time() - start)
            generator, cpu, drawn = torch.Generator().manual_seed(0), [], []
            for r in range(rounds):
                start = time.thread_time()
                batch = sampler.Generation(loaded.model, loaded.vocab, guard=fresh,
                                           reference=loaded.reference, primer=loaded.primer,
                                           generator=generator)
                ids = batch.add([rows[(r * width + i) % len(rows)] for i in range(width)])
                while batch.active:
                    batch.step()
                cpu.append(time.thread_time() - start)
                drawn += batch.take(ids) or []
            texts.setdefault(arm, drawn)
            assert drawn == texts[arm], "the same seed drew other texts"
            first = max(1, min(rounds, people // width))  # each person's first request
            took[arm].append((sum(cpu[:first]) / (first * width),
                              sum(cpu[first:]) / max(1, (rounds - first) * width)))
    same = texts["blocks"] == texts["one state at a time"]
    print(f"whole replies, {rounds} rounds of {width} of {len(rows)} people in turn (sampler CPU "
          f"a reply, best of {repeats}; people's first requests | their next ones):")
    for arm, times in took.items():
        print(f"  {arm:<21} {min(t for t, _ in times) * 1e3:6.2f} | "
              f"{min(t for _, t in times) * 1e3:6.2f} ms")
    print(f"  the same texts from the same seed: {'yes' if same else 'NO'}; the guard's blocks "
          f"built in {min(built) * 1e3:.0f} ms (part of a model's cold load)")


@torch.inference_mode()
def held_out_loss(loaded: LoadedModel, texts: list[tuple[Voice, list[str]]],
                  int8: bool) -> tuple[float, int]:
    """Mean nats/char of `texts` (each row one voice's messages, end marks between them),
    read by the sampler's own step with float or int8 products; and the characters read."""
    vocab, step = loaded.vocab, sampler._Stepper(loaded.model, int8=int8)
    ids = [[vocab.eom, *(i for m in msgs for i in [*vocab.encode(m), vocab.eom])][:400]
           for _voice, msgs in texts]
    ctx = step.contexts(torch.tensor([v.person for v, _ in texts]),
                        torch.tensor([v.channel for v, _ in texts]))
    layers, width = loaded.model.config.num_layers, loaded.model.config.hidden_size
    h, c = torch.zeros(layers, len(ids), width), torch.zeros(layers, len(ids), width)
    total, count = 0.0, 0
    for t in range(max(map(len, ids)) - 1):
        now = torch.tensor([row[t] if t < len(row) else 0 for row in ids])
        logp = step(now, h, c, ctx).log_softmax(-1)
        for b, row in enumerate(ids):
            if t + 1 < len(row):
                total -= logp[b, row[t + 1]].item()
                count += 1
    return total / count, count


if __name__ == "__main__":
    main()
