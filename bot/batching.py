"""One thread does all of the bot's sampling, and requests that arrive while it works share
its next batch.

Twenty listener threads each running torch at once fight over the same cores (measured: 20
concurrent 4 x 280 draws took 6 s each on 2 cores, against 0.13 s for one alone). Queued
here, concurrent requests for the same model become one `sample_rows` batch, whose cost
grows far slower than the number of rows.
"""

from __future__ import annotations

import queue
import threading
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from trainer.registry import LoadedModel
from trainer.sampler import Row, sample_rows

MAX_ROWS = 128  # per batch: beyond this a batch takes long enough to hurt its first rows


@dataclass
class _Job:
    loaded: LoadedModel
    rows: list[Row]
    future: Future[list[str]] = field(default_factory=Future)


class SampleBatcher:
    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = device
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._started = False
        self._start_lock = threading.Lock()

    def sample(self, loaded: LoadedModel, rows: list[Row]) -> list[str]:
        """Raw texts for `rows` from `loaded` (blocks until its batch is done)."""
        with self._start_lock:
            if not self._started:
                threading.Thread(target=self._work, name="mimic-sampler", daemon=True).start()
                self._started = True
        job = _Job(loaded, rows)
        self._jobs.put(job)
        return job.future.result()

    def _work(self) -> None:
        while True:
            jobs = [self._jobs.get()]
            while True:  # everything queued meanwhile joins this round
                try:
                    jobs.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            by_model: dict[int, list[_Job]] = defaultdict(list)
            for job in jobs:
                by_model[job.loaded.version_id].append(job)
            for group in by_model.values():
                for batch in _batches(group):
                    self._run(batch)

    def _run(self, jobs: list[_Job]) -> None:
        loaded = jobs[0].loaded
        try:
            texts = sample_rows(loaded.model, loaded.vocab,
                                [row for job in jobs for row in job.rows], device=self.device)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            for job in jobs:
                job.future.set_exception(exc)
            return
        for job in jobs:
            job.future.set_result(texts[: len(job.rows)])
            texts = texts[len(job.rows):]


def _batches(jobs: list[_Job]) -> list[list[_Job]]:
    """Consecutive jobs in batches of at most MAX_ROWS rows (a bigger job goes alone)."""
    out: list[list[_Job]] = []
    rows = MAX_ROWS
    for job in jobs:
        if rows + len(job.rows) > MAX_ROWS:
            out.append([])
            rows = 0
        out[-1].append(job)
        rows += len(job.rows)
    return out
