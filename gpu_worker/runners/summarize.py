# ruff: noqa: RUF002
"""`summarize` / `centroid-extractive`: an extractive summary of a student's notes or readings.

The policy's `summarization` task (models `summarizer-large`, `summarizer-bn-small`) is answered by
this runner through its aliases. It is extractive: it picks the document's most central sentences
and returns them in their original order, so every word of a summary is the student's own text.
No package we may install ships abstractive summarization weights (nothing may come from a model
hub), and the one generative model we carry, SmolLM2-135M, cannot write Bengali.

Method, per document, the same for Bengali and English (no tokenizer, no vocabulary):
- split into sentences at `.`, `?`, `!`, the Bengali danda `।` and line breaks;
- represent each sentence by hashed character 2–4-grams and words (`textfeat.words`), weighted
  `(1 + log tf) × idf` with the idf over the document's own sentences, L2-normalised;
- score each sentence by its cosine to the document's centroid, then choose greedily by maximal
  marginal relevance (`0.7 × centrality − 0.3 × similarity to what is already chosen`), so two
  sentences that say the same thing are not both picked.

Inputs: `{"text": str (≤ 100,000 chars), "max_sentences": int 1..20 = 3}`.
Outputs: `{"summary": str, "sentences": [index, …] (0-based, in order), "of": n sentences,
"coverage": cosine of the summary to the whole document (0..1)}`. A text of `max_sentences`
sentences or fewer is returned whole.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from gpu_worker.runners.base import ModelRunner, RunnerInfo
from gpu_worker.runners.textfeat import words
from gpu_worker.runners.validate import optional_int, reject_unknown, require_mapping, require_text

MAX_CHARS = 100_000
DEFAULT_SENTENCES = 3
MAX_SENTENCES = 20
RELEVANCE_WEIGHT = 0.7
_SENTENCE_END = re.compile(r"(?<=[.?!।])\s+|\n+")

Vector = dict[int, float]


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip() and words(s)]


def _grams(sentence: str) -> Counter[int]:
    ws = words(sentence)
    grams: Counter[int] = Counter(zlib.crc32(b"w" + w.encode()) for w in ws)
    padded = " " + " ".join(ws) + " "
    for n in (2, 3, 4):
        for i in range(len(padded) - n + 1):
            gram = padded[i : i + n]
            if gram.strip():
                grams[zlib.crc32(gram.encode())] += 1
    return grams


def _vectors(sentences: Sequence[str]) -> list[Vector]:
    counts = [_grams(s) for s in sentences]
    df: Counter[int] = Counter(k for c in counts for k in c)
    n = len(sentences)
    out: list[Vector] = []
    for c in counts:
        v = {k: (1.0 + math.log(tf)) * (math.log((1 + n) / (1 + df[k])) + 1.0) for k, tf in c.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        out.append({k: x / norm for k, x in v.items()})
    return out


def _dot(a: Vector, b: Vector) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(x * b.get(k, 0.0) for k, x in a.items())


def _sum(vectors: Sequence[Vector]) -> Vector:
    total: dict[int, float] = {}
    for v in vectors:
        for k, x in v.items():
            total[k] = total.get(k, 0.0) + x
    norm = math.sqrt(sum(x * x for x in total.values())) or 1.0
    return {k: x / norm for k, x in total.items()}


def summarize(text: str, max_sentences: int = DEFAULT_SENTENCES) -> dict[str, Any]:
    sentences = split_sentences(text)
    if len(sentences) <= max_sentences:
        return {"summary": " ".join(sentences), "sentences": list(range(len(sentences))), "of": len(sentences),
                "coverage": 1.0 if sentences else 0.0}  # fmt: skip
    vectors = _vectors(sentences)
    centroid = _sum(vectors)
    centrality = [_dot(v, centroid) for v in vectors]
    chosen: list[int] = []
    while len(chosen) < max_sentences:
        best, best_score = -1, -math.inf
        for i, v in enumerate(vectors):
            if i in chosen:
                continue
            redundancy = max((_dot(v, vectors[j]) for j in chosen), default=0.0)
            score = RELEVANCE_WEIGHT * centrality[i] - (1 - RELEVANCE_WEIGHT) * redundancy
            if score > best_score:  # ties keep the earlier sentence
                best, best_score = i, score
        chosen.append(best)
    chosen.sort()
    coverage = _dot(_sum([vectors[i] for i in chosen]), centroid)
    return {
        "summary": " ".join(sentences[i] for i in chosen),
        "sentences": chosen,
        "of": len(sentences),
        "coverage": round(max(0.0, min(1.0, coverage)), 4),
    }


class SummarizeRunner(ModelRunner):
    task = "summarize"
    model = "centroid-extractive"
    aliases = (("summarization", "*"),)  # the policy's summarizer-large / summarizer-bn-small
    FIELDS = ("text", "max_sentences")

    def load(self) -> None:  # nothing to load: the method needs no weights
        return None

    def info(self) -> RunnerInfo:
        return RunnerInfo(self.task, self.model, device="cpu", dtype="-", max_batch_size=32, preferred_min=1)

    def check(self, inputs: Mapping[str, Any]) -> None:
        inputs = require_mapping(inputs, self.task)
        reject_unknown(inputs, self.FIELDS, self.task)
        require_text(inputs, "text", self.task, max_chars=MAX_CHARS)
        optional_int(inputs, "max_sentences", self.task, DEFAULT_SENTENCES, 1, MAX_SENTENCES)

    def run_batch(self, inputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [summarize(str(x["text"]), int(x.get("max_sentences", DEFAULT_SENTENCES))) for x in inputs]


__all__ = ["SummarizeRunner", "split_sentences", "summarize"]
