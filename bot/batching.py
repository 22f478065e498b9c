"""One thread does all of the bot's sampling, with continuous batching: a request that arrives
while others are being written joins their batch at the next character.

Twenty listener threads each running torch at once fight over the same cores (measured: 20
concurrent 4 x 280 draws took 6 s each on 2 cores, against 0.13 s for one alone). Here all
rows of one model advance together, one character a step, whose cost grows far slower than
the number of rows; a request is answered as soon as its own rows end. A dedicated model's
rows join the batch of the shared model they are drawn against (only their own net's step is
extra): a batch of their own stepped two nets for one reply, and every fifth round of the
latency bench, holding three of them, was its slowest.

A second thread reads the requests' contexts (the messages a reply answers) before they join:
reading is a long packed pass per batch of contexts (20 of 200 characters: ~140 ms), which on
the sampling thread held up every reply being written. Requests that arrive during a read are
read together in the next one. One thread, not each request's own: torch keeps scratch buffers
per thread that reads (reading on 32 listener threads grew the process by 650 MB).

Both threads are stopped and joined by `close()`, which `mimic serve` and the demo call on the
way out and an atexit hook calls in any case: a thread killed inside torch at interpreter
exit aborts the whole process ("terminate called without an active exception").
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import weakref
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from mimic.trainer.registry import LoadedModel
from mimic.trainer.sampler import Generation, Row

log = logging.getLogger(__name__)
MAX_ROWS = 128  # in flight per model: past this, new requests wait for rows to end


class Closed(RuntimeError):
    """The batcher was closed: no more sampling in this process."""


_STOP = None  # the queue's stop marker


@dataclass
class _Job:
    loaded: LoadedModel
    rows: list[Row]
    future: Future[list[str]] = field(default_factory=Future)
    ids: list[int] = field(default_factory=list)  # its rows in the model's Generation


@dataclass
class _Read:
    loaded: LoadedModel
    rows: list[Row]
    future: Future[None] = field(default_factory=Future)


@dataclass
class _Batch:
    generation: Generation
    jobs: list[_Job] = field(default_factory=list)


class SampleBatcher:
    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = device
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._reads: queue.SimpleQueue[_Read | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._reader: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()

    def sample(self, loaded: LoadedModel, rows: list[Row]) -> list[str]:
        """Raw texts for `rows` from `loaded` (blocks until they are written; their contexts
        are read first, on the reading thread); Closed once the batcher is closed, also for
        requests that were waiting."""
        if any(row.context for row in rows):
            read = _Read(loaded, rows)
            self._put(self._reads, read)
            read.future.result()
        job = _Job(loaded, rows)
        self._put(self._jobs, job)
        return job.future.result()

    def _put(self, into: queue.SimpleQueue[Any], item: _Job | _Read) -> None:
        with self._lock:
            if self._closed:
                raise Closed("mimic is shutting down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="mimic-sampler",
                                                daemon=True)
                self._reader = threading.Thread(target=self._read_work, name="mimic-reader",
                                                daemon=True)
                self._thread.start()
                self._reader.start()
                # A weak reference, so the hook keeps no batcher alive; it runs before the
                # interpreter tears its threads down.
                atexit.register(_close_at_exit, weakref.ref(self))
            into.put(item)

    def close(self, timeout: float = 30) -> None:
        """Fail what is pending with Closed, stop the threads and join them (idempotent)."""
        with self._lock:
            self._closed = True
            threads = [(self._jobs, self._thread), (self._reads, self._reader)]
            for into, thread in threads:
                if thread is not None and thread.is_alive():
                    into.put(_STOP)
        for _into, thread in threads:
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)

    def _read_work(self) -> None:
        """Read the contexts of every request waiting, one pass per model, until stopped."""
        waiting: list[_Read | None] = []
        try:
            while _STOP not in waiting:
                waiting = _drain(self._reads, wait=True)
                reads = [r for r in waiting if r is not None]
                for version in dict.fromkeys(r.loaded.version_id for r in reads):
                    group = [r for r in reads if r.loaded.version_id == version]
                    try:
                        group[0].loaded.prime([row for r in group for row in r.rows])
                    except Exception as exc:  # noqa: BLE001 - the requests get it
                        for r in group:
                            r.future.set_exception(exc)
                        continue
                    for r in group:
                        r.future.set_result(None)
        except BaseException:
            self._stopped("reading")
            raise
        finally:
            _fail_all(waiting, self._reads)

    def _work(self) -> None:
        batches: dict[tuple[int, ...], _Batch] = {}  # by what is stepped (see _admit)
        waiting: list[_Job] = []  # over MAX_ROWS for now, or just arrived
        stopping = False
        try:
            while not stopping:
                incoming = _drain(self._jobs, wait=not (batches or waiting))
                stopping = _STOP in incoming
                waiting += [job for job in incoming if job is not _STOP]
                if not stopping:
                    waiting = self._admit(batches, waiting)
                    self._advance(batches)
        except BaseException:
            self._stopped("sampling")
            raise
        finally:
            _fail_all(waiting + [job for batch in batches.values() for job in batch.jobs],
                      self._jobs)

    def _stopped(self, which: str) -> None:
        """A thread died: say so, and take no more requests (nobody waits for it)."""
        log.exception("the %s thread stopped", which)
        with self._lock:
            self._closed = True

    def _admit(self, batches: dict[tuple[int, ...], _Batch], jobs: list[_Job]
               ) -> list[_Job]:
        """Add jobs' rows to their model's batch; returns those that must wait for room. A
        dedicated model loaded with the shared one it is drawn against (bot/models.py) writes
        in the shared model's batch."""
        later: list[_Job] = []
        for job in jobs:
            loaded, own = job.loaded, None
            model, reference = loaded.model, loaded.reference
            if reference is not None and reference.config.conditioned:
                model, reference, own = reference, None, loaded.model
            # Rows share a batch when they share its net and what reads and guards them.
            key = (id(model), id(reference), id(loaded.guard), id(loaded.primer))
            batch = batches.get(key) or _Batch(Generation(
                model, loaded.vocab, reference=reference, guard=loaded.guard,
                primer=loaded.primer, device=self.device))
            if len(batch.generation) and len(batch.generation) + len(job.rows) > MAX_ROWS:
                later.append(job)
                continue
            try:
                job.ids = batch.generation.add(job.rows, own)
            except Exception as exc:  # noqa: BLE001 - the request gets it, not the thread
                job.future.set_exception(exc)
                continue
            batch.jobs.append(job)
            batches[key] = batch
        return later

    def _advance(self, batches: dict[tuple[int, ...], _Batch]) -> None:
        """One character for every model's batch; answer the jobs whose rows all ended."""
        for key, batch in list(batches.items()):
            try:
                if batch.generation.active:
                    batch.generation.step()
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for job in batch.jobs:
                    job.future.set_exception(exc)
                del batches[key]
                continue
            going = []
            for job in batch.jobs:
                texts = batch.generation.take(job.ids)
                if texts is None:
                    going.append(job)
                else:
                    job.future.set_result(texts)
            batch.jobs = going
            if not going:
                del batches[key]


def _drain(items: queue.SimpleQueue[Any], *, wait: bool) -> list[Any]:
    """Everything in the queue now; with `wait`, sleeps until there is something."""
    found = [items.get()] if wait else []
    while True:
        try:
            found.append(items.get_nowait())
        except queue.Empty:
            return found


def _fail_all(pending: list[Any], left: queue.SimpleQueue[Any]) -> None:
    """Fail `pending` and what is left in the queue with Closed: their requests wait no more."""
    closed = Closed("mimic is shutting down")
    for item in pending + _drain(left, wait=False):
        if item is not None and not item.future.done():
            item.future.set_exception(closed)


def _close_at_exit(ref: weakref.ref[SampleBatcher]) -> None:
    batcher = ref()
    if batcher is not None:
        batcher.close()
