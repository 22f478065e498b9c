"""Character vocabulary: frequent characters become symbols, the rest map to UNK.

Two specials lead the table so their ids never move when the corpus changes: EOM (end of
message, which is also what the sampler primes on and stops at) and UNK.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

EOM_TOKEN = "<eom>"
UNK_TOKEN = "<unk>"


class Vocab:
    """An ordered character table. Ids: 0 = EOM, 1 = UNK, then characters in sorted order."""

    def __init__(self, chars: Sequence[str]) -> None:
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("vocab characters must be distinct single characters")
        self.chars: list[str] = list(chars)
        self.itos: list[str] = [EOM_TOKEN, UNK_TOKEN, *self.chars]
        self.stoi: dict[str, int] = {c: i + 2 for i, c in enumerate(self.chars)}

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 5) -> Vocab:
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text)
        # Sorted by code point, not frequency, so two builds over the same data agree exactly.
        return cls(sorted(c for c, n in counts.items() if n >= min_count))

    @property
    def eom(self) -> int:
        return 0

    @property
    def unk(self) -> int:
        return 1

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def __hash__(self) -> int:
        return hash(tuple(self.chars))

    def encode(self, text: str) -> list[int]:
        get, unk = self.stoi.get, self.unk
        return [get(c, unk) for c in text]

    def encode_corpus(self, messages: Iterable[str]) -> np.ndarray:
        """All messages as one stream, each followed by EOM (the model learns where to stop)."""
        texts = list(messages)
        if not texts:
            return np.zeros(0, dtype=np.int64)
        # One table lookup over the code points of the whole corpus (millions of characters):
        # NUL separates the messages and becomes EOM, unless NUL is itself a character here.
        if "\x00" in self.stoi or any("\x00" in t for t in texts):
            out: list[int] = []
            for text in texts:
                out.extend(self.encode(text))
                out.append(self.eom)
            return np.asarray(out, dtype=np.int64)
        codes = np.frombuffer(("\x00".join(texts) + "\x00").encode("utf-32-le"),
                              dtype=np.uint32)
        table = np.full(int(codes.max()) + 1, self.unk, dtype=np.int64)
        for char, index in self.stoi.items():
            if ord(char) < len(table):
                table[ord(char)] = index
        table[0] = self.eom
        return table[codes]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids back to text; EOM becomes a newline and UNK the replacement character U+FFFD."""
        table = ["\n", "\ufffd", *self.chars]
        return "".join(table[int(i)] for i in ids)

    def to_json(self) -> str:
        return json.dumps({"chars": "".join(self.chars)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str) -> Vocab:
        return cls(list(json.loads(data)["chars"]))
