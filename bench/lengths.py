"""How well a person's training messages foretell how long their held-out messages run: the
length the trainer fits each person's replies to (trainer/lengths.py: expected_length, half the
mean of all their training messages and half that of their newest RECENT) against either
half alone. Each figure is the mean |predicted / held-out mean - 1| over the biggest senders
(the held-out messages are each person's newest, as `mimic eval` reads them).

    .venv/bin/python -m bench.lengths [--folder data/bench/quality]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.workspace import imported, machine
from mimic.trainer.corpus import load_workspace
from mimic.trainer.lengths import RECENT, expected_length, mean_length

GROUPS = (10, 20, 40)  # the biggest senders, in groups this big


PREDICTORS: dict[str, Callable[[Sequence[str]], float]] = {
    "all training messages": mean_length,
    f"newest {RECENT}": lambda texts: mean_length(texts[-RECENT:]),
    "half and half (the trainer's)": expected_length,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=Path("data/bench/quality"),
                   help="a bench workspace already imported (bench.quality's, or Shakespeare's "
                        "from bench.second_workspace)")
    args = p.parse_args()
    store, settings = imported(args.folder, "", lambda _path: None, refresh=False)
    with store.session() as session:
        workspace = load_workspace(session, settings, settings.min_chars)
    people = workspace.people[: max(GROUPS)]
    held_out = {user: mean_length([m.text for m in workspace.val[f"user:{user}"]])
                for user in people}
    trained: dict[str, list[str]] = {user: [] for user in people}
    for m in sorted(workspace.train, key=lambda m: m.ts):  # oldest first, as the trainer reads
        if m.user in trained:
            trained[m.user].append(m.text)
    print(f"machine: {machine()}")
    print(f"workspace: {args.folder}; each predictor of a person's held-out mean length: "
          "mean |error| / the group's mean")
    print(f"{'predictor':<32}" + "".join(f"{'top ' + str(k):>16}" for k in GROUPS))
    for name, predict in PREDICTORS.items():
        said = [predict(trained[user]) for user in people]
        errors = [abs(x / held_out[user] - 1) for x, user in zip(said, people, strict=True)]
        print(f"{name:<32}" + "".join(
            f"{statistics.mean(errors[:k]):>9.1%} / {statistics.mean(said[:k]):4.1f}"
            for k in GROUPS))
    print(f"{'(their held-out messages)':<32}" + "".join(
        f"{statistics.mean(held_out[u] for u in people[:k]):>16.1f}" for k in GROUPS))


if __name__ == "__main__":
    main()
