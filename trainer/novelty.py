"""Is a generated text quoting its training data? A set of hashes of every WINDOW-char span
of the training messages, stored as a sorted uint64 array, answers in microseconds.

Exact in one direction: a verbatim copy of ≥ WINDOW chars is always found (no false
negatives). A false positive needs a 64-bit hash collision, negligible at corpus sizes.
Spans never cross message boundaries, matching how the sampler stops at end of message.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

WINDOW = 40
_BASE = np.uint64(0x9E3779B97F4A7C15 | 1)  # odd multiplier for the polynomial hash


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads code points over 64 bits before the polynomial hash,
    so similar characters do not give related hashes."""
    x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def _window_hashes(codes: np.ndarray, window: int) -> np.ndarray:
    """Hash of codes[i : i + window] for every i (uint64 arithmetic wraps mod 2**64)."""
    n = len(codes) - window + 1
    if n <= 0:
        return np.empty(0, dtype=np.uint64)
    mixed = _mix(codes)
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(window):  # `window` vectorised passes beat one pass in Python
            h *= _BASE  # in place: no temporaries on multi-MB corpora
            h += mixed[j : j + n]
    return h


class NoveltyIndex:
    def __init__(self, hashes: np.ndarray, window: int = WINDOW) -> None:
        self.hashes = np.asarray(hashes, dtype=np.uint64)  # sorted and unique
        self.window = window

    @classmethod
    def build(cls, messages: Iterable[str], window: int = WINDOW) -> NoveltyIndex:
        # NUL separates messages; a window touching one is dropped so none spans two messages.
        codes = _codes("\x00".join(messages) + "\x00")
        hashes = _window_hashes(codes, window)
        sep = np.concatenate([[0], np.cumsum(codes == 0)])
        clean = sep[window : window + len(hashes)] == sep[: len(hashes)]
        kept = np.sort(hashes[clean])  # sort + dedupe: several times faster than np.unique
        return cls(kept[np.concatenate([kept[:1] == kept[:1], kept[1:] != kept[:-1]])], window)

    def __len__(self) -> int:
        return len(self.hashes)

    def _hits(self, text: str) -> np.ndarray:
        """hits[i]: the window starting at text[i] occurs in the training text."""
        h = _window_hashes(_codes(text), self.window)
        if not len(h) or not len(self.hashes):
            return np.zeros(len(h), dtype=bool)
        pos = np.minimum(np.searchsorted(self.hashes, h), len(self.hashes) - 1)
        return self.hashes[pos] == h

    def longest_copy(self, text: str) -> int:
        """Length of the longest verbatim training span in `text`, 0 if none ≥ window.
        Computed as the longest run of overlapping matching windows, so it is an upper
        bound: overlapping windows could in principle come from different places."""
        hits = self._hits(text)
        if not hits.any():
            return 0
        edges = np.diff(np.concatenate([[0], hits.astype(np.int8), [0]]))
        run = (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max()
        return int(run) + self.window - 1

    def has_copy(self, text: str, span: int = WINDOW) -> bool:
        """Whether `text` holds a verbatim training span of at least `span` chars."""
        if span < self.window:
            raise ValueError(f"this index finds copies of ≥ {self.window} chars, not {span}")
        if span == self.window:
            return bool(self._hits(text).any())
        return self.longest_copy(text) >= span

    def save(self, path: str | Path) -> None:
        # The window is part of the file name contract: np.save keeps only the array.
        np.save(Path(path), self.hashes, allow_pickle=False)

    @classmethod
    def load(cls, path: str | Path, window: int = WINDOW) -> NoveltyIndex:
        return cls(np.load(Path(path), allow_pickle=False), window)
