"""The sampler's cost per character: milliseconds a step of `Generation` takes with 1, 5, 20
and 40 replies in the batch (each row drawn against "anyone", the word guard on, after the
person's last messages), on the workspace model `bench.quality` trained. With `--against REV`,
the sampler of git revision REV is loaded beside today's and both are measured in turn in one
run (best of four), so the ratio is not the machine's mood:

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
from mimic.trainer.registry import active_version
from mimic.trainer.report import covered_people

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
    modules = {"now": sampler}
    if args.against:
        modules = {args.against: sampler_at(args.against), **modules}
    best: dict[tuple[str, int], float] = {}
    for _round in range(4):
        for name, module in modules.items():
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
    if args.against:
        print(f"{'now / ' + args.against:<21} " + "  ".join(
            f"{best['now', n] / best[args.against, n]:6.2f}" for n in SIZES))


if __name__ == "__main__":
    main()
