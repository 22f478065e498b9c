"""Training in torchrun workers (gloo on the CPU), with real torch and a real SQLite store:
the same model as one process, published once, and failures that say what failed."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from mimic.core.config import Settings
from mimic.core.store import ModelVersion, Store, make_engine, upgrade
from mimic.exporter.importer import import_export
from mimic.trainer import distributed
from mimic.trainer.corpus import BASE
from mimic.trainer.distributed import DistributedError, fit_parallel
from mimic.trainer.fit import TrainConfig
from mimic.trainer.model import CharLSTM, ModelConfig
from mimic.trainer.train import train
from tests import workspace
from tests.test_training import _cpu_seconds
from tests.trained import QUICK, TINY_MODEL, settings_for


def _imported(root: Path) -> tuple[Store, Settings]:
    """The tiny workspace imported, nothing trained yet."""
    settings = settings_for(root)
    upgrade(make_engine(settings.database_url))
    store = Store(make_engine(settings.database_url))
    import_export(store, workspace.build(root / "export"))
    return store, settings


def _versions(store: Store) -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(ModelVersion)) or 0


@pytest.mark.slow
def test_two_workers_train_the_model_one_process_does_and_publish_it_once(
        tmp_path: Path) -> None:
    store, settings = _imported(tmp_path)
    # The same first weights, global batch (QUICK's 8 lanes: 4 per worker) and steps.
    torch.manual_seed(0)
    one = train(store, settings, BASE, model_overrides=TINY_MODEL, train_overrides=QUICK,
                fresh=True)
    folders = set((settings.data_dir / "models" / "base").iterdir())
    torch.manual_seed(0)
    two = train(store, settings_for(tmp_path, MIMIC_NPROC=2), BASE, model_overrides=TINY_MODEL,
                train_overrides=QUICK, fresh=True)
    assert (one.version, two.version, _versions(store)) == (1, 2, 2)
    assert len(set((settings.data_dir / "models" / "base").iterdir()) - folders) == 1
    assert one.val_after is not None and two.val_after is not None
    # The same lanes in the same steps: only float sums in another order (no dropout in one
    # layer), so far closer than noise.
    assert two.val_after == pytest.approx(one.val_after, abs=1e-3)
    assert two.note.endswith("stopped: max_steps")


@pytest.mark.slow
def test_mimic_train_nproc_2_stops_its_workers_on_ctrl_c_and_publishes_what_they_learnt(
        tmp_path: Path) -> None:
    store, settings = _imported(tmp_path)
    env = {**os.environ, "DATABASE_URL": settings.database_url,
           "MIMIC_DATA_DIR": str(settings.data_dir), "MIMIC_MIN_CHARS": "500",
           "MIMIC_DEVICE": "cpu"}
    # A batch that does not split is refused before anything is trained.
    done = subprocess.run([sys.executable, "-m", "mimic.cli", "train", "--base", "--nproc", "3"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "cannot share the global batch of 32 lanes" in done.stderr
    # Ctrl-C's default handling, whatever the runner's: one started in the background of a
    # non-interactive shell ignores SIGINT, and its children would too (never told to stop).
    proc = subprocess.Popen([sys.executable, "-m", "mimic.cli", "train", "--base", "--nproc",
                             "2", "--minutes", "5"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    workers: list[int] = []
    # Training by now: past starting up, which on a slow day took a worker over 5 CPU-seconds
    # (interrupted at step 0 once).
    while len(workers) < 2 or min(map(_cpu_seconds, workers)) < 10:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
        time.sleep(0.2)
        workers = _workers(proc.pid)
    proc.send_signal(signal.SIGINT)
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 0, errors
    assert "workspace: v1 promoted" in out and _versions(store) == 1
    metrics = settings.data_dir / "models" / "base" / "1" / "metrics.json"
    metrics = json.loads(metrics.read_text())
    assert metrics["stopped"] == "interrupted" and metrics["steps"] > 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


def _workers(pid: int) -> list[int]:
    """The torchrun workers under process `pid`."""
    parents, commands = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            commands[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return [p for p in found if b"-m\0mimic.trainer.distributed" in commands[p]
            and b"torch.distributed.run" not in commands[p]]


@pytest.mark.slow
def test_a_failing_worker_is_a_clear_error_not_a_hang() -> None:
    model = CharLSTM(ModelConfig(vocab_size=8, embed_dim=4, hidden_size=8, num_layers=1))
    ids = np.arange(200) % 8
    cfg = TrainConfig(batch_size=8, seq_len=32, max_seconds=0, max_steps=5)
    # 40 characters make one lane of 32: nothing for the second worker.
    with pytest.raises(DistributedError, match=r"2 torchrun workers failed \(exit 1\): "
                       r"\[rank\d\]: ValueError: the training stream is too short"):
        fit_parallel(model, ids[:40], ids[40:], cfg, torch.device("cpu"), nproc=2)


def test_a_worker_failing_after_the_result_is_written_costs_a_warning_not_the_run(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    died = "RuntimeError: Connection closed by peer\n"
    with pytest.raises(DistributedError, match=r"failed \(exit -6\): RuntimeError: Conn"):
        distributed._outcome(2, -6, tmp_path, died)  # no result: the run failed
    (tmp_path / distributed.RESULT).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="mimic.trainer.distributed"):
        distributed._outcome(2, -6, tmp_path, died)
    assert "after the result was written (exit -6): RuntimeError" in caplog.text
    distributed._outcome(2, 0, tmp_path, "")
