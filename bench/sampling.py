"""The sampler's cost per character: milliseconds a step of `Generation` takes with 1, 5, 20
and 40 replies in the batch (each row drawn against "anyone", the word guard on, after the
person's last messages), on the workspace model `bench.quality` trained. With `--against REV`,
the sampler of git revision REV is loaded beside today's and both are measured in turn in one
run (best of four), so the ratio is not the machine's mood. Today's is measured with float
weights too ("float": `INT8` off), and what the int8 products cost in quality is printed: the
loss of the people's 10 latest messages (held out from training), read through each step.

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
from mimic.trainer import sampler
from mimic.trainer.corpus import BASE, recent
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
