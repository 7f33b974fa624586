"""`grade` / `rubric-minilm`: short-answer grading against reference answers and rubric key points.

Method (documented with its accuracy in docs/worker-models.md):

1. features of an answer against its question —
   - `similarity`: the largest cosine between the answer's all-MiniLM-L6-v2 embedding and the
     references' (meaningful for English; MiniLM is English-only, so it is weak for Bengali);
   - `char_similarity`: the largest cosine between character 2-4-gram count vectors of the answer
     and a reference (script-agnostic: works for Bengali as for English);
   - `coverage`: the share of rubric key points the answer covers. A key point is covered when one
     of its keywords occurs in the normalised answer (substring, so Bengali inflections such as
     সচেতন → সচেতনতা count), or — for key points given as text only — when its char 3-grams are
     mostly contained in the answer (≥ 0.6) or, for English, its embedding is close to the answer's
     (cosine ≥ 0.6);
   - `length`: log(1 + answer words) / log(1 + reference words), capped at 1.5;
   the similarity features enter once per language (en, bn) so each language gets its own weight;
2. a ridge regression from the features to score / max_score, fitted at load time on the training
   part of `data/grading/answers.jsonl` (human scores 0-5 authored for this repository), clipped to
   [0, 1] and scaled to the question's `max_score`.

The held-out part (a third of each question's answers, chosen by a hash of the answer id) gives MAE, Pearson,
Spearman, exact and within-1 agreement per language: `GradeRunner.metrics` after `load()`.

Inputs: `{"question_id": str, "answer": str}` for a question of the bank (`data/grading/
questions.json`, or `HYB_GRADING_DIR`); or inline `{"answer": str, "references": [str, ...],
"key_points": [str, ...], "max_score": number = 5, "lang": "en"|"bn" = detected}`.
Outputs: `{"score": float, "max_score": number, "similarity": float, "char_similarity": float,
"coverage": {key point id: bool}, "coverage_ratio": float}`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from broker.errors import ConfigError
from gpu_worker.runners.base import InvalidInput, ModelRunner, RunnerInfo
from gpu_worker.runners.classify import latin_share, repo_root
from gpu_worker.runners.device import DeviceChoice
from gpu_worker.runners.minilm import MiniLMEncoder, Verifier, shared_encoder
from gpu_worker.runners.textfeat import normalise, words
from gpu_worker.runners.validate import reject_unknown, require_mapping, require_text

RIDGE = 1.0
MAX_KEY_POINTS = 32
MAX_REFERENCES = 16
FEATURES = ("bias", "coverage", "length", "sim_en", "char_en", "sim_bn", "char_bn")


def grading_dir(override: Path | None = None) -> Path:
    if override is not None:
        return Path(override)
    env = os.environ.get("HYB_GRADING_DIR")
    return Path(env) if env else repo_root() / "data" / "grading"


@dataclass
class KeyPoint:
    id: str
    text: str
    keywords: list[str] = field(default_factory=list)


@dataclass
class Question:
    id: str
    lang: str
    prompt: str
    max_score: float
    references: list[str]
    key_points: list[KeyPoint]


def _char_counts(text: str, lo: int = 2, hi: int = 4) -> Counter[str]:
    s = " " + " ".join(words(text)) + " "
    out: Counter[str] = Counter()
    for n in range(lo, hi + 1):
        for i in range(len(s) - n + 1):
            g = s[i : i + n]
            if g.strip():
                out[g] += 1
    return out


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    if not a or not b:
        return 0.0
    dot = sum(v * b.get(k, 0) for k, v in a.items())
    na = math.sqrt(sum(v * v for v in a.values()))
    nb = math.sqrt(sum(v * v for v in b.values()))
    return dot / (na * nb)


def _containment(part: str, whole: Counter[str]) -> float:
    grams = _char_counts(part, 3, 3)
    if not grams:
        return 0.0
    return sum(1 for g in grams if g in whole) / len(grams)


def load_bank(path: Path) -> dict[str, Question]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the grading question bank {path}: {exc}") from exc
    bank: dict[str, Question] = {}
    for qid, q in raw.items():
        try:
            bank[qid] = Question(
                id=qid,
                lang=str(q["lang"]),
                prompt=str(q.get("prompt", "")),
                max_score=float(q.get("max_score", 5)),
                references=[str(r) for r in q["references"]],
                key_points=[
                    KeyPoint(str(k["id"]), str(k["text"]), [str(w) for w in k.get("keywords", [])])
                    for k in q["key_points"]
                ],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: question {qid!r} is malformed: {exc}") from exc
    return bank


def load_answers(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise ConfigError(f"{path}:{n}: not JSON: {exc}") from exc
    return rows


def _key(answer_id: str) -> bytes:
    return hashlib.sha256(answer_id.encode()).digest()


def split_answers(rows: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """The fixed held-out third, per question: the third of its answers with the smallest sha256 of
    their id (so each question and both languages are in the test part, independent of file order)."""
    by_q: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_q.setdefault(str(r["question_id"]), []).append(r)
    test_ids: set[str] = set()
    for group in by_q.values():
        ranked = sorted(group, key=lambda r: _key(str(r["id"])))
        test_ids.update(str(r["id"]) for r in ranked[: len(group) // 3])
    return [r for r in rows if str(r["id"]) not in test_ids], [r for r in rows if str(r["id"]) in test_ids]


def _rank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for v in np.unique(x):  # average ranks for ties
        m = x == v
        ranks[m] = ranks[m].mean()
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def agreement(pred: Sequence[float], gold: Sequence[float]) -> dict[str, float]:
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gold, dtype=np.float64)
    return {
        "n": len(p),
        "mae": round(float(np.mean(np.abs(p - g))), 3),
        "pearson": round(_pearson(p, g), 3),
        "spearman": round(_pearson(_rank(p), _rank(g)), 3),
        "exact": round(float(np.mean(np.round(p) == g)), 3),
        "within_1": round(float(np.mean(np.abs(np.round(p) - g) <= 1)), 3),
    }


class Grader:
    """Features + the fitted ridge; shared by every `grade` runner of the process."""

    def __init__(self, encoder: MiniLMEncoder, bank: dict[str, Question]) -> None:
        self.encoder = encoder
        self.bank = bank
        self.weights = np.zeros(len(FEATURES))
        self.metrics: dict[str, Any] = {}
        self._ref_emb: dict[str, torch.Tensor] = {}
        self._kp_emb: dict[str, torch.Tensor] = {}

    def _question_embeddings(self, q: Question) -> tuple[torch.Tensor, torch.Tensor]:
        if q.id not in self._ref_emb or not q.id:
            ref = self.encoder.encode(q.references)
            kp = self.encoder.encode([k.text for k in q.key_points]) if q.key_points else torch.zeros((0, 384))
            if not q.id:
                return ref, kp
            self._ref_emb[q.id], self._kp_emb[q.id] = ref, kp
        return self._ref_emb[q.id], self._kp_emb[q.id]

    def features(self, questions: Sequence[Question], answers: Sequence[str]) -> list[dict[str, Any]]:
        emb = self.encoder.encode(list(answers))
        rows: list[dict[str, Any]] = []
        for q, answer, a_emb in zip(questions, answers, emb, strict=True):
            ref_emb, kp_emb = self._question_embeddings(q)
            sim = float((ref_emb @ a_emb).max()) if len(ref_emb) else 0.0
            a_chars = _char_counts(answer)
            char_sim = max((_cosine(a_chars, _char_counts(r)) for r in q.references), default=0.0)
            norm_answer = " " + " ".join(words(answer)) + " "
            cover: dict[str, bool] = {}
            for i, kp in enumerate(q.key_points):
                if kp.keywords:
                    hit = any(normalise(k) in norm_answer or normalise(k) in normalise(answer) for k in kp.keywords)
                else:
                    hit = _containment(kp.text, a_chars) >= 0.6
                    if not hit and q.lang == "en" and len(kp_emb):
                        hit = float(kp_emb[i] @ a_emb) >= 0.6
                cover[kp.id] = bool(hit)
            ref_words = max(1, round(sum(len(words(r)) for r in q.references) / max(1, len(q.references))))
            length = min(1.5, math.log1p(len(words(answer))) / math.log1p(ref_words))
            en = 1.0 if q.lang == "en" else 0.0
            rows.append(
                {
                    "similarity": sim,
                    "char_similarity": char_sim,
                    "coverage": cover,
                    "coverage_ratio": sum(cover.values()) / len(cover) if cover else 0.0,
                    "length": length,
                    "vector": np.array(
                        [
                            1.0,
                            sum(cover.values()) / len(cover) if cover else 0.0,
                            length,
                            sim * en,
                            char_sim * en,
                            sim * (1 - en),
                            char_sim * (1 - en),
                        ]
                    ),
                }
            )
        return rows

    def predict(self, questions: Sequence[Question], answers: Sequence[str]) -> list[dict[str, Any]]:
        feats = self.features(questions, answers)
        out = []
        for q, f in zip(questions, feats, strict=True):
            frac = float(np.clip(f["vector"] @ self.weights, 0.0, 1.0))
            out.append(
                {
                    "score": round(frac * q.max_score, 2),
                    "max_score": q.max_score,
                    "similarity": round(f["similarity"], 4),
                    "char_similarity": round(f["char_similarity"], 4),
                    "coverage": f["coverage"],
                    "coverage_ratio": round(f["coverage_ratio"], 4),
                }
            )
        return out

    def fit(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Ridge on the training rows (not the bias), then metrics on the held-out rows."""
        t0 = time.perf_counter()
        usable = [r for r in rows if r.get("question_id") in self.bank]
        train, test = split_answers(usable)
        if not train:
            raise ConfigError("the grading set has no training answers for the question bank")
        qs = [self.bank[r["question_id"]] for r in train]
        x = np.stack([f["vector"] for f in self.features(qs, [r["answer"] for r in train])])
        y = np.array([float(r["score"]) / q.max_score for r, q in zip(train, qs, strict=True)])
        reg = RIDGE * np.eye(x.shape[1])
        reg[0, 0] = 0.0
        self.weights = np.linalg.solve(x.T @ x + reg, x.T @ y)
        metrics: dict[str, Any] = {"train_n": len(train), "test_n": len(test), "weights": {}}
        metrics["weights"] = {k: round(float(w), 4) for k, w in zip(FEATURES, self.weights, strict=True)}
        if test:
            tq = [self.bank[r["question_id"]] for r in test]
            preds = self.predict(tq, [r["answer"] for r in test])
            feats = self.features(tq, [r["answer"] for r in test])
            for lang in [*sorted({q.lang for q in tq}), "all"]:
                idx = [i for i, q in enumerate(tq) if lang in ("all", q.lang)]
                gold = [float(test[i]["score"]) for i in idx]
                metrics[lang] = agreement([preds[i]["score"] for i in idx], gold)
                # Baseline: key-point coverage alone, scaled to the score range.
                metrics[f"{lang}_coverage_only"] = agreement(
                    [feats[i]["coverage_ratio"] * tq[i].max_score for i in idx], gold
                )
        metrics["fit_s"] = round(time.perf_counter() - t0, 2)
        self.metrics = metrics


_graders: dict[str, Grader] = {}
_graders_lock = threading.Lock()


def shared_grader(encoder: MiniLMEncoder, data_dir: Path | None = None) -> Grader:
    ddir = grading_dir(data_dir)
    key = f"{id(encoder)}|{ddir.resolve()}"
    with _graders_lock:
        if key not in _graders:
            grader = Grader(encoder, load_bank(ddir / "questions.json"))
            answers = ddir / "answers.jsonl"
            if answers.exists():
                grader.fit(load_answers(answers))
            else:
                raise ConfigError(f"no labelled answers at {answers}: the grader has nothing to fit on")
            _graders[key] = grader
        return _graders[key]


class GradeRunner(ModelRunner):
    task = "grade"
    model = "rubric-minilm"
    FIELDS = ("question_id", "answer", "references", "key_points", "max_score", "lang")

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        encoder_path: Path | None = None,
        choice: DeviceChoice | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self._data_dir = data_dir
        self._encoder_path = encoder_path
        self._choice = choice
        self._verifier = verifier
        self.grader: Grader | None = None
        self.load_s = 0.0

    def load(self) -> None:
        if self.grader is None:
            t0 = time.perf_counter()
            encoder = shared_encoder(self._encoder_path, self._choice, self._verifier)
            self.grader = shared_grader(encoder, self._data_dir)
            self.load_s = time.perf_counter() - t0

    @property
    def metrics(self) -> dict[str, Any]:
        return self._ready().metrics

    def _ready(self) -> Grader:
        if self.grader is None:
            raise RuntimeError(f"{self.task}/{self.model} used before load()")
        return self.grader

    def info(self) -> RunnerInfo:
        if self.grader is not None:
            c = self.grader.encoder.choice
            return RunnerInfo(self.task, self.model, c.device_name, c.dtype_name)
        return RunnerInfo(self.task, self.model, "cpu", "float32")

    def _parse(self, inputs: Mapping[str, Any]) -> tuple[Question, str]:
        grader = self._ready()
        inputs = require_mapping(inputs, self.task)
        reject_unknown(inputs, self.FIELDS, self.task)
        answer = require_text(inputs, "answer", self.task, max_chars=20_000)
        n = grader.encoder.count_tokens([answer])[0]
        if n > grader.encoder.max_tokens:
            raise InvalidInput(
                f"{self.task}: the answer is {n} word pieces, over the model's context of "
                f"{grader.encoder.max_tokens}; grade it in parts"
            )
        if "question_id" in inputs:
            inline = [f for f in ("references", "key_points", "max_score", "lang") if f in inputs]
            if inline:
                raise InvalidInput(f"{self.task}: give question_id or inline {', '.join(inline)}, not both")
            qid = inputs["question_id"]
            if not isinstance(qid, str) or qid not in grader.bank:
                raise InvalidInput(f"{self.task}: unknown question_id {qid!r}")
            return grader.bank[qid], answer
        return self._inline_question(inputs, answer), answer

    def _inline_question(self, inputs: Mapping[str, Any], answer: str) -> Question:
        refs = inputs.get("references")
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
            raise InvalidInput(f"{self.task}: send question_id, or references as a non-empty list of strings")
        if len(refs) > MAX_REFERENCES:
            raise InvalidInput(f"{self.task}: at most {MAX_REFERENCES} references, got {len(refs)}")
        kps = inputs.get("key_points", [])
        if not isinstance(kps, list) or not all(isinstance(k, str) and k.strip() for k in kps):
            raise InvalidInput(f"{self.task}: key_points must be a list of non-empty strings")
        if len(kps) > MAX_KEY_POINTS:
            raise InvalidInput(f"{self.task}: at most {MAX_KEY_POINTS} key points, got {len(kps)}")
        max_score = inputs.get("max_score", 5)
        if isinstance(max_score, bool) or not isinstance(max_score, int | float) or not 0 < max_score <= 1000:
            raise InvalidInput(f"{self.task}: max_score must be a number in (0, 1000], got {max_score!r}")
        lang = inputs.get("lang") or ("en" if latin_share(" ".join(refs)) >= 0.5 else "bn")
        if lang not in ("en", "bn"):
            raise InvalidInput(f"{self.task}: lang must be en or bn, got {lang!r}")
        return Question(
            id="",
            lang=lang,
            prompt="",
            max_score=float(max_score),
            references=list(refs),
            key_points=[KeyPoint(f"k{i + 1}", k) for i, k in enumerate(kps)],
        )

    def check(self, inputs: Mapping[str, Any]) -> None:
        self._parse(inputs)

    def run_batch(self, inputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        grader = self._ready()
        parsed = [self._parse(x) for x in inputs]
        return grader.predict([q for q, _ in parsed], [a for _, a in parsed])


__all__ = [
    "GradeRunner",
    "Grader",
    "Question",
    "agreement",
    "grading_dir",
    "load_bank",
    "shared_grader",
    "split_answers",
]
