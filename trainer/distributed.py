"""Training in N processes: `torchrun` workers with DistributedDataParallel, each walking its
share of the lanes (gloo on the CPU; NCCL on GPUs, one GPU per worker: cuda:LOCAL_RANK).

`fit_parallel` is the one way in, for `mimic train` and the nightly job alike. The calling
process does everything else as it does for one process: it holds the retrain lock, reads the
store, sizes the model, and publishes. It hands the workers one file with the model and both
streams, so every rank trains the same corpus, vocabulary and size; rank 0 prints progress as
JSON lines, validates, and writes the best weights back (fit.py says how ranks agree):

    python -m torch.distributed.run --standalone --nproc-per-node N \
        -m mimic.trainer.distributed FOLDER
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mimic.core.children import die_with_parent
from mimic.trainer.fit import FitResult, Stream, TrainConfig, cores, fit, training_precision
from mimic.trainer.model import CharLSTM

log = logging.getLogger(__name__)
# In the folder the launcher shares with its workers: the model, streams and settings; rank
# 0's FitResult; and, on Ctrl-C, an empty file that tells rank 0 to stop.
JOB, RESULT, STOP = "job.pt", "result.pt", "stop"
ERROR_KEPT = 1500  # characters of the workers' stderr in the error
_RAISED = re.compile(r"(?:\[rank\d+\]: )?([\w.]+(?:Error|Exception)): .*")


class DistributedError(RuntimeError):
    """Training cannot run in the processes asked for, or a worker failed; says which."""


def check(nproc: int, cfg: TrainConfig, device: torch.device) -> None:
    """Raise DistributedError if `nproc` workers cannot train `cfg` on `device`."""
    if nproc < 1:
        raise DistributedError(f"--nproc (MIMIC_NPROC) must be at least 1, not {nproc}")
    if cfg.batch_size % nproc:
        raise DistributedError(
            f"{nproc} workers cannot share the global batch of {cfg.batch_size} lanes evenly: "
            f"use a number of processes that divides {cfg.batch_size}")
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise DistributedError(f"{nproc} workers need a GPU each, and this machine has "
                               f"{torch.cuda.device_count()}")


def fit_parallel(
    model: CharLSTM,
    train_data: Stream | np.ndarray,
    val_data: Stream | np.ndarray,
    cfg: TrainConfig,
    device: torch.device,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    *,
    nproc: int = 1,
) -> FitResult:
    """`fit`, in this process (nproc 1) or in `nproc` torchrun workers: the same steps on the
    same global batch, and the same result (the model left holding the best weights).
    Ctrl-C ends training at the next step and returns the best weights so far, as fit does;
    a second one kills the workers. Raises DistributedError when a worker fails."""
    if nproc == 1:
        return fit(model, train_data, val_data, cfg, device, on_progress)
    check(nproc, cfg, device)
    usable = cores()
    if device.type == "cpu" and nproc > usable:
        log.warning("%d training workers on %d CPU cores: they will take turns, slower than "
                    "one process", nproc, usable)
    # Each CPU worker gets its share of the cores, not all of them.
    threads = cfg.num_threads or max(1, usable // nproc)
    if cfg.precision == "auto":  # measured once, here: every rank must train alike
        cfg = replace(cfg, precision=training_precision(model, cfg, device))
    with tempfile.TemporaryDirectory(prefix="mimic-workers-") as folder:
        torch.save({"model": model.cpu(), "train": Stream.of(train_data),
                    "val": Stream.of(val_data), "cfg": replace(cfg, num_threads=threads),
                    "device": device.type}, Path(folder) / JOB)
        _launch(nproc, Path(folder), threads, on_progress)
        result: FitResult = torch.load(Path(folder) / RESULT, weights_only=False)  # ours
    model.to(device).load_state_dict(result.best_state_dict)
    model.eval()
    return result


def _launch(nproc: int, folder: Path, threads: int,
            on_progress: Callable[[dict[str, Any]], None] | None) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", __name__, str(folder)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    # stderr to a file: a pipe we do not read while reading stdout could fill and block them.
    # A session of their own: the terminal's Ctrl-C comes to us alone, and we pass it on as a
    # STOP file, which rank 0 looks for before each step (a signal could strike a worker
    # still importing torch, or one rank in the middle of a collective).
    with tempfile.TemporaryFile("w+") as errors, subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, text=True, env=env,
            start_new_session=True, preexec_fn=die_with_parent) as workers:
        assert workers.stdout is not None
        while True:
            try:
                for line in workers.stdout:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:  # not ours
                        continue
                    if on_progress:
                        on_progress(row)
                workers.wait()
                break
            except KeyboardInterrupt:
                if (folder / STOP).exists():  # the second Ctrl-C
                    workers.kill()  # and the workers with it (die_with_parent)
                    raise
                (folder / STOP).touch()
        errors.seek(0)
        stderr = errors.read()
    _outcome(nproc, workers.returncode, folder, stderr)


def _outcome(nproc: int, returncode: int, folder: Path, stderr: str) -> None:
    """Raise DistributedError unless rank 0 wrote its result. A worker that failed after
    that (the workers wait for the result before shutting down: a shutdown is all that is
    left) costs a warning, not the run: rank 0 writes the result whole, once training ended."""
    if not (folder / RESULT).exists():
        raise DistributedError(f"training in {nproc} torchrun workers failed (exit "
                               f"{returncode}): {_reason(stderr)}")
    if returncode:
        log.warning("a training worker failed while shutting down, after the result was "
                    "written (exit %s): %s; the result is kept", returncode, _reason(stderr))


def _reason(stderr: str) -> str:
    """What the first failed worker raised (its traceback's last line, which a worker in a
    process group prefixes with its rank), or else the end of stderr."""
    for line in stderr.splitlines():
        raised = _RAISED.match(line)
        if raised and not raised[1].endswith("ChildFailedError"):  # torchrun's own summary
            return raised[0].strip()
    return stderr[-ERROR_KEPT:].strip()


def main(argv: list[str] | None = None) -> None:
    """A worker: train its share of FOLDER's job; rank 0 saves the result there."""
    (folder,) = map(Path, argv or sys.argv[1:])
    die_with_parent()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    args = torch.load(folder / JOB, weights_only=False)
    cuda = args["device"] == "cuda"
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        # Every rank has read the job: its messages need not stay on disk, where a killed run
        # would leave them behind (past an opt-out).
        dist.barrier()
        if rank == 0:
            (folder / JOB).unlink()
        result = fit(args["model"], args["train"], args["val"], args["cfg"], device,
                     on_progress=(lambda row: print(json.dumps(row), flush=True))
                     if rank == 0 else None, stop_requested=(folder / STOP).exists)
        if rank == 0:
            torch.save(result, folder / "result.part")
            (folder / "result.part").replace(folder / RESULT)  # whole or not at all
        # No rank shuts down before the result is written: in 2 or 3 of 34 runs stopped by
        # Ctrl-C, a worker aborted (SIGABRT) while rank 0 was still finishing, and torchrun
        # killed rank 0 with it.
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
