# ruff: noqa: RUF002
"""Hashed n-gram features that work for Bengali and English alike (no tokenizer, no vocabulary).

Text is NFKC-normalised and lower-cased; Bengali digits (০-৯) become ASCII digits. Features:

- character n-grams of lengths `char_min..char_max` over the words joined by single spaces and padded
  with a space at both ends (so word starts/ends are their own grams, and short grams can span two
  words); `cross_word=False` keeps them inside each padded word instead;
- word n-grams of lengths `word_min..word_max`;

each hashed with CRC-32 (stable across processes and Python versions, unlike `hash()`) into
`buckets` slots per namespace, weighted `(1 + log tf) × idf` and L2-normalised per namespace. The
output is (indices, offsets, weights), the input of `torch.nn.EmbeddingBag(mode="sum")` — a linear
model over a sparse vector without ever building it.
"""

from __future__ import annotations

import math
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

_BN_DIGITS = str.maketrans("০১২৩৪৫৬৭৮৯", "0123456789")
_WORD = re.compile(r"[\w\u0980-\u09ff]+", re.UNICODE)


def normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower().translate(_BN_DIGITS)


def words(text: str) -> list[str]:
    return _WORD.findall(normalise(text))


@dataclass(frozen=True)
class NgramConfig:
    buckets: int = 1 << 18
    char_min: int = 1
    char_max: int = 5
    word_min: int = 1
    word_max: int = 2
    cross_word: bool = True

    def to_dict(self) -> dict[str, int | bool]:
        return asdict(self)


class NgramFeaturizer:
    def __init__(self, config: NgramConfig | None = None, idf: np.ndarray | None = None) -> None:
        self.config = config or NgramConfig()
        self.idf = idf

    @property
    def dim(self) -> int:
        return 2 * self.config.buckets

    def _counts(self, text: str) -> tuple[Counter[int], Counter[int]]:
        c = self.config
        ws = words(text)
        chars: Counter[int] = Counter()
        spans = [" " + " ".join(ws) + " "] if c.cross_word else [f" {w} " for w in ws]
        for padded in spans:
            for n in range(c.char_min, c.char_max + 1):
                for i in range(len(padded) - n + 1):
                    gram = padded[i : i + n]
                    if gram.strip():
                        chars[zlib.crc32(gram.encode()) % c.buckets] += 1
        wgrams: Counter[int] = Counter()
        for n in range(c.word_min, c.word_max + 1):
            for i in range(len(ws) - n + 1):
                gram = "\x1f".join(ws[i : i + n])
                wgrams[c.buckets + zlib.crc32(gram.encode()) % c.buckets] += 1
        return chars, wgrams

    def fit(self, texts: Sequence[str]) -> NgramFeaturizer:
        df = np.zeros(self.dim, dtype=np.float64)
        for t in texts:
            ch, wg = self._counts(t)
            for k in (*ch, *wg):
                df[k] += 1
        n = len(texts)
        self.idf = (np.log((1 + n) / (1 + df)) + 1.0).astype(np.float32)
        return self

    def transform(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.idf is None:
            raise RuntimeError("NgramFeaturizer.transform before fit")
        idx: list[int] = []
        wts: list[float] = []
        offsets: list[int] = []
        for t in texts:
            offsets.append(len(idx))
            for counts in self._counts(t):
                if not counts:
                    continue
                keys = list(counts)
                vals = [(1.0 + math.log(counts[k])) * float(self.idf[k]) for k in keys]
                norm = math.sqrt(sum(v * v for v in vals)) or 1.0
                idx.extend(keys)
                wts.extend(v / norm for v in vals)
        return (
            torch.tensor(idx, dtype=torch.long),
            torch.tensor(offsets, dtype=torch.long),
            torch.tensor(wts, dtype=torch.float32),
        )


__all__ = ["NgramConfig", "NgramFeaturizer", "normalise", "words"]
