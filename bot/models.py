"""Loaded models, cached: bounded, least recently used, keyed by registry version, and dropped
once nobody has asked for them in IDLE_S (a promoted version's predecessor is never asked
for again).

Each request asks the registry which version is active (one indexed query), so a promotion or
rollback takes effect on the next request without a restart; requests already holding the old
model finish with it. A dedicated model is loaded with its parent from the cache: one copy of
the shared model, whose batch then also writes the dedicated model's replies.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

from mimic.core.store import ModelVersion
from mimic.trainer.registry import UNLOADABLE, LoadedModel, load_version

# Resident on the chitchat bench (measured once, the process before and after each load): the
# shared model 62 MB, a dedicated one 16-20 MB (it shares the shared model's net). Room for the
# shared model, its predecessor for a while, and the dedicated models of a busy hour.
SIZE = 32
IDLE_S = 3600.0


class ModelCache:
    def __init__(self, data_dir: Path, size: int = SIZE,
                 device: torch.device | str = "cpu", idle_s: float = IDLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.data_dir, self.size, self.device = data_dir, size, device
        self.idle_s, self.clock = idle_s, clock
        self._models: OrderedDict[int, LoadedModel] = OrderedDict()
        self._used: dict[int, float] = {}  # when each was last asked for
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Lock] = {}

    def get(self, row: ModelVersion, parent: ModelVersion | None = None) -> LoadedModel:
        with self._lock:
            self._drop_idle()
            if row.id in self._models:
                self._touch(row.id)
                if parent is not None and parent.id in self._models:  # what it is drawn
                    self._touch(parent.id)  # against is in use too
                return self._models[row.id]
            loading = self._loading.setdefault(row.id, threading.Lock())
        # One thread loads a version; others asking for it wait rather than load it again.
        with loading:
            with self._lock:
                if row.id in self._models:
                    return self._models[row.id]
            shared = None
            if parent is not None:
                # A broken parent: load_version serves the dedicated model without it.
                with contextlib.suppress(*UNLOADABLE):
                    shared = self.get(parent)
            loaded = load_version(self.data_dir, row, self.device, parent, shared)
            # What a version holds lives as long as it is served: out of the collector's
            # full passes, which walk every object tracked (see `mimic serve`). Garbage first,
            # so that none is kept for good.
            gc.collect()
            gc.freeze()
            with self._lock:
                self._models[row.id] = loaded
                self._touch(row.id)
                while len(self._models) > self.size:
                    self._used.pop(self._models.popitem(last=False)[0])
                self._loading.pop(row.id, None)
            return loaded

    def _touch(self, version_id: int) -> None:
        self._models.move_to_end(version_id)
        self._used[version_id] = self.clock()

    def _drop_idle(self) -> None:
        """Drop the least recently used while they have gone unasked for IDLE_S (requests
        holding one finish with it)."""
        now = self.clock()
        while self._models:
            oldest = next(iter(self._models))
            if now - self._used[oldest] < self.idle_s:
                return
            del self._models[oldest], self._used[oldest]

    def __len__(self) -> int:
        return len(self._models)
