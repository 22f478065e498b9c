"""The bot's sampling thread: requests that arrive while others are being written join their
batch, each gets its own rows, and a failure reaches only the requests it concerns."""

from __future__ import annotations

import contextlib
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from mimic.bot import batching
from mimic.bot.batching import SampleBatcher, _Batch, _Job
from mimic.trainer.model import CharLSTM, ModelConfig
from mimic.trainer.novelty import NoveltyIndex
from mimic.trainer.registry import LoadedModel
from mimic.trainer.sampler import Row
from mimic.trainer.vocab import Vocab

VOCAB = Vocab(list("abcdefghij "))


def loaded(version_id: int) -> LoadedModel:
    torch.manual_seed(version_id)
    model = CharLSTM(ModelConfig(len(VOCAB), embed_dim=8, hidden_size=16, num_layers=1)).eval()
    return LoadedModel(version_id, 1, model, VOCAB, NoveltyIndex.build([]))


class _NotifyingQueue(queue.SimpleQueue):
    def __init__(self, changed: threading.Condition) -> None:
        self.changed = changed

    def put(self, item: _Job, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        with self.changed:
            self.changed.notify_all()


class WatchedBatcher(SampleBatcher):
    """Pauses before its first step until `release` is set; records each step's batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()
        self._jobs = _NotifyingQueue(self.changed)
        self.release = threading.Event()
        self.sizes: list[dict[int, int]] = []

    def _advance(self, batches: dict[tuple[int, ...], _Batch]) -> None:
        with self.changed:  # by the version of the batch's first request
            self.sizes.append({b.jobs[0].loaded.version_id: len(b.generation)
                               for b in batches.values()})
            self.changed.notify_all()
        self.release.wait(30)
        super()._advance(batches)


def test_requests_arriving_mid_generation_join_the_batch() -> None:
    a, b = loaded(1), loaded(2)
    batcher = WatchedBatcher()
    asks = [(b if i % 3 == 0 else a, "abcdefgh"[i], 1 + i % 4) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.sample, asks[0][0], [Row(asks[0][1], 1.0)] * asks[0][2])
        with batcher.changed:  # the first request is being written ...
            assert batcher.changed.wait_for(lambda: batcher.sizes, 30)
        rest = [pool.submit(batcher.sample, m, [Row(seed, 1.0)] * n) for m, seed, n in asks[1:]]
        with batcher.changed:  # ... when seven more arrive
            assert batcher.changed.wait_for(lambda: batcher._jobs.qsize() == 7, 30)
        batcher.release.set()
        results = [first.result(30)] + [f.result(30) for f in rest]
    batcher.close()
    for (_model, seed, n), texts in zip(asks, results, strict=True):
        assert len(texts) == n and all(t.startswith(seed) for t in texts)
    assert batcher.sizes[0] == {2: 1}
    # At the next step everyone who came was in: one batch per model, all their rows.
    assert batcher.sizes[1] == {1: 2 + 3 + 1 + 2 + 4, 2: batcher.sizes[1][2]}
    assert batcher.sizes[1][2] in (4 + 3, 1 + 4 + 3)  # the first may have ended at step 1


def test_requests_over_the_row_cap_wait_for_room(monkeypatch: pytest.MonkeyPatch) -> None:
    def size(batches: dict[tuple[int, ...], _Batch]) -> int:
        (batch,) = batches.values()
        return len(batch.generation)

    monkeypatch.setattr(batching, "MAX_ROWS", 4)
    batcher = SampleBatcher()
    batches: dict[tuple[int, ...], _Batch] = {}
    served = loaded(1)  # one version, as the bot's cache gives every request
    jobs = [_Job(served, [Row("a", 1.0)] * n) for n in (3, 2, 1, 6)]
    waiting = batcher._admit(batches, jobs)
    assert [len(j.rows) for j in waiting] == [2, 6] and size(batches) == 4
    while batches:
        batcher._advance(batches)
    assert all(j.future.result(0)[0].startswith("a") for j in jobs[:1] + jobs[2:3])
    waiting = batcher._admit(batches, waiting)
    assert [len(j.rows) for j in waiting] == [6] and size(batches) == 2
    while batches:
        batcher._advance(batches)
    # A request bigger than the cap goes alone rather than never.
    assert batcher._admit(batches, waiting) == [] and size(batches) == 6


def test_a_failure_reaches_only_its_request() -> None:
    batcher = SampleBatcher()
    with pytest.raises(ValueError, match="temperature"):
        batcher.sample(loaded(1), [Row("", 5.0)])
    assert batcher.sample(loaded(1), [Row("a", 1.0)])[0].startswith("a")  # still serving
    batcher.close()


def test_close_fails_what_is_pending_and_joins_the_thread() -> None:
    batcher = WatchedBatcher()
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(batcher.sample, loaded(1), [Row("a", 1.0)])
        with batcher.changed:  # being written, paused before its first step
            assert batcher.changed.wait_for(lambda: batcher.sizes, 30)
        second = pool.submit(batcher.sample, loaded(2), [Row("b", 1.0)])
        with batcher.changed:
            assert batcher.changed.wait_for(lambda: batcher._jobs.qsize() == 1, 30)
        closing = pool.submit(batcher.close)
        with batcher.changed:  # the stop marker is queued behind the second request
            assert batcher.changed.wait_for(lambda: batcher._jobs.qsize() == 2, 30)
        batcher.release.set()
        closing.result(30)
        with pytest.raises(batching.Closed):
            second.result(30)
        with contextlib.suppress(batching.Closed):  # done if its one character ended it
            assert first.result(30)[0].startswith("a")
    assert batcher._thread is not None and not batcher._thread.is_alive()
    with pytest.raises(batching.Closed):
        batcher.sample(loaded(1), [Row("a", 1.0)])
    batcher.close()  # again: nothing to do


def test_contexts_are_read_together_on_the_reading_thread() -> None:
    """Requests that arrive while a context is being read are read together next, on the
    reading thread (never on the sampling thread or the requests' own), and still answered."""
    changed, go = threading.Condition(), threading.Event()
    reads: list[tuple[str, int]] = []

    class Reading(CharLSTM):
        def read(self, x, *args, **kwargs):  # type: ignore[no-untyped-def]
            with changed:
                reads.append((threading.current_thread().name, len(x)))
                changed.notify_all()
            go.wait(30)  # the first read lasts until the others have queued
            return super().read(x, *args, **kwargs)

    torch.manual_seed(0)
    model = Reading(ModelConfig(len(VOCAB), embed_dim=8, hidden_size=16, num_layers=1)).eval()
    served = LoadedModel(7, 1, model, VOCAB, NoveltyIndex.build([]))
    batcher = SampleBatcher()
    batcher._reads = _NotifyingQueue(changed)
    rows = [Row("a", 1.0, context=((0, 0, "bcd" * (i + 1)),)) for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(batcher.sample, served, [rows[0]])
        with changed:
            assert changed.wait_for(lambda: reads, 30)
        rest = [pool.submit(batcher.sample, served, [row]) for row in rows[1:]]
        with changed:
            assert changed.wait_for(lambda: batcher._reads.qsize() == 5, 30)
        go.set()
        texts = [first.result(30)] + [f.result(30) for f in rest]
    batcher.close()
    assert all(t[0].startswith("a") for t in texts)
    assert reads == [("mimic-reader", 1), ("mimic-reader", 5)]
    assert batcher._reader is not None and not batcher._reader.is_alive()
