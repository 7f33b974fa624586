"""Language-neutral text features: hashed character and word n-grams (numpy only).

Bengali and English share one feature space: text is NFC-normalised and lower-cased, Bengali digits
are read as ASCII digits, and every word contributes its character n-grams (with word-boundary
padding) and the text its word unigrams and bigrams. Each n-gram is hashed (CRC-32, stable across
processes and machines) into `buckets` slots; counts are log-scaled and the vector L2-normalised.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
import zlib
from dataclasses import dataclass

import numpy as np

__all__ = ["HashedNgrams", "latin_share", "normalize"]

_BN_DIGITS = str.maketrans("০১২৩৪৫৬৭৮৯", "0123456789")
_TOKEN = re.compile(r"[\w\u0980-\u09FF]+", re.UNICODE)


def normalize(text: str) -> str:
    return unicodedata.normalize("NFC", text).translate(_BN_DIGITS).lower()


def latin_share(text: str) -> float:
    """Share of the letters of `text` that are Latin (0.0 for Bengali script, 1.0 for English or Banglish).

    The classifier weighs the (English-only) MiniLM embedding by this, so Bengali-script text is
    classified from its n-grams alone."""
    latin = other = 0
    for ch in text:
        if ch.isalpha() or "\u0980" <= ch <= "\u09ff":
            if ch.isascii():
                latin += 1
            else:
                other += 1
    total = latin + other
    return latin / total if total else 0.0


@dataclass(frozen=True)
class HashedNgrams:
    buckets: int = 1 << 14
    char_min: int = 1
    char_max: int = 4
    words: bool = True

    def config(self) -> dict[str, int | bool]:
        return {"buckets": self.buckets, "char_min": self.char_min, "char_max": self.char_max, "words": self.words}

    def grams(self, text: str) -> list[str]:
        tokens = _TOKEN.findall(normalize(text))
        out: list[str] = []
        for tok in tokens:
            padded = f" {tok} "
            for n in range(self.char_min, self.char_max + 1):
                out.extend("c" + padded[i : i + n] for i in range(len(padded) - n + 1))
        if self.words:
            out.extend("w" + t for t in tokens)
            out.extend("b" + a + " " + b for a, b in itertools.pairwise(tokens))
        return out

    def sparse(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Bucket indices and weights of one text (weights L2-normalised; empty for a text without words)."""
        counts: dict[int, int] = {}
        for g in self.grams(text):
            i = zlib.crc32(g.encode("utf-8")) % self.buckets
            counts[i] = counts.get(i, 0) + 1
        if not counts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        val = np.log1p(np.fromiter(counts.values(), dtype=np.float32, count=len(counts)))
        val /= np.float32(np.linalg.norm(val))
        return idx, val

    def csr(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indptr, indices, values) of the texts' feature rows."""
        rows = [self.sparse(t) for t in texts]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([idx.size for idx, _ in rows])
        indices = np.concatenate([idx for idx, _ in rows]) if rows else np.zeros(0, dtype=np.int64)
        values = np.concatenate([val for _, val in rows]) if rows else np.zeros(0, dtype=np.float32)
        return indptr, indices, values

    def dense(self, texts: list[str]) -> np.ndarray:
        x = np.zeros((len(texts), self.buckets), dtype=np.float32)
        for row, text in enumerate(texts):
            idx, val = self.sparse(text)
            np.add.at(x[row], idx, val)
        return x
