"""The cloud side of `hybrid up`: a GPU-worker process serving the policy's cloud models.

The routing policy names cloud models per task (`question-classification` → `qclf-xlmr-large`,
`essay-grading` → `essay-grader-large`); the edge agent seals jobs with those names. On one machine
the worker serves them with what is built and signed here, on the worker package's consumer loop,
batcher, drain and health server (`gpu_worker.worker.Worker`):

- `question-classification` / `qclf-xlmr-large`, two builds (`--cloud-models`):
  `full` — the worker package's torch runners (`gpu_worker.runners.classify`: n-grams + MiniLM with
  two heads for text, an MLP for an embedding); `light` — the signed ONNX artifacts: text → the
  classifier on the fp32 MiniLM embedding (the edge runs the same head on int8), embedding
  (`embedding_f16`, sent instead of personal text) → a softmax head over the embedding alone,
  trained from the training split at first start and cached next to the models.
- `essay-grading` / `essay-grader-large`: a transparent rubric (length, structure, vocabulary,
  reasoning words in Bengali and English) with feedback sentences. It stands in for a large grader
  so that the pipeline (tokenized essays out, grades and feedback back) is real end to end.

Run by `hybrid up` as `python -m hybrid.stack.cloud_worker …` (one per worker of the pool).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpu_worker.runners.base import InvalidInput, ModelRunner, RunnerInfo

QCLF_TASK, QCLF_MODEL = "question-classification", "qclf-xlmr-large"
GRADE_TASK, GRADE_MODEL = "essay-grading", "essay-grader-large"
MAX_TEXT = 20_000


def _text(inputs: Mapping[str, Any], task: str) -> str:
    text = inputs.get("text")
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"{task}: inputs need a non-empty 'text'")
    if len(text) > MAX_TEXT:
        raise InvalidInput(f"{task}: text is {len(text)} characters, over {MAX_TEXT}")
    return text


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def train_embedding_head(
    emb: np.ndarray, y: np.ndarray, n_classes: int, *, epochs: int = 400, lr: float = 2.0, l2: float = 1e-4
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax regression on (n, d) embeddings, full-batch gradient descent (deterministic)."""
    n, d = emb.shape
    w = np.zeros((d, n_classes), dtype=np.float64)
    b = np.zeros(n_classes, dtype=np.float64)
    onehot = np.eye(n_classes)[y]
    x = emb.astype(np.float64)
    for _ in range(epochs):
        p = _softmax(x @ w + b)
        g = (p - onehot) / n
        w -= lr * (x.T @ g + l2 * w)
        b -= lr * g.sum(axis=0)
    return w.astype(np.float32), b.astype(np.float32)


class CloudClassifier(ModelRunner):
    task = QCLF_TASK
    model = QCLF_MODEL

    def __init__(self, models_dir: Path, verify_key: str | None, cache_dir: Path) -> None:
        self.models_dir = models_dir
        self.verify_key = verify_key
        self.cache_dir = cache_dir
        self._embedder: Any = None
        self._clf: Any = None
        self._head: tuple[np.ndarray, np.ndarray] | None = None

    def load(self) -> None:
        from broker.registry import ModelRegistry, load_verify_key
        from edge_agent.models.runtime import CLASSIFIER, EMBEDDER, EMBEDDER_FP32, HashedLinearClassifier, OnnxEmbedder

        registry = ModelRegistry(self.models_dir)
        key = load_verify_key(self.verify_key)
        fp32 = registry.verify(EMBEDDER_FP32, None, verify_key=key)
        clf = registry.verify(CLASSIFIER, None, verify_key=key)
        self._embedder = OnnxEmbedder(fp32.path, threads=1)
        self._clf = HashedLinearClassifier.load(clf.path)
        tag = f"{clf.manifest.version}-{clf.manifest.sha256[:12]}"
        cache = self.cache_dir / f"qclf-embedding-head-{tag}.npz"
        if cache.exists():
            with np.load(cache) as npz:
                self._head = (npz["w"], npz["b"])
            return
        int8 = registry.verify(EMBEDDER, None, verify_key=key)
        from edge_agent.models.build import load_dataset

        train = load_dataset("train")
        labels = list(self._clf.labels)
        y = np.array([labels.index(r["label"]) for r in train])
        emb = OnnxEmbedder(int8.path, threads=1).embed([r["text"] for r in train])
        self._head = train_embedding_head(emb, y, len(labels))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, w=self._head[0], b=self._head[1])
        os.replace(tmp, cache)

    def info(self) -> RunnerInfo:
        return RunnerInfo(
            self.task, self.model, "cpu", "float32", max_batch_size=32, preferred_min=8, max_queue_delay_ms=5.0
        )

    def check(self, inputs: Mapping[str, Any]) -> None:
        if "embedding_f16" in inputs:
            raw = inputs["embedding_f16"]
            if not isinstance(raw, bytes) or len(raw) != 2 * int(inputs.get("dim", 0)) or len(raw) == 0:
                raise InvalidInput(f"{self.task}: embedding_f16 must be 2 x dim bytes")
            return
        _text(inputs, self.task)

    def run_batch(self, inputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        assert self._clf is not None and self._head is not None
        labels = list(self._clf.labels)
        out: list[dict[str, Any] | None] = [None] * len(inputs)
        texts = [(i, str(x["text"])) for i, x in enumerate(inputs) if "embedding_f16" not in x]
        embs = [
            (i, np.frombuffer(x["embedding_f16"], dtype="<f2")) for i, x in enumerate(inputs) if "embedding_f16" in x
        ]
        if texts:
            emb = self._embedder.embed([t for _, t in texts])
            for (i, _), (label, conf) in zip(texts, self._clf.predict([t for _, t in texts], emb), strict=True):
                out[i] = {"label": label, "confidence": round(float(conf), 4), "model": self.model, "input": "text"}
        if embs:
            x = np.stack([e.astype(np.float32) for _, e in embs])
            p = _softmax(x @ self._head[0] + self._head[1])
            for (i, _), row in zip(embs, p, strict=True):
                k = int(row.argmax())
                out[i] = {
                    "label": labels[k],
                    "confidence": round(float(row[k]), 4),
                    "model": self.model,
                    "input": "embedding",
                }
        return [o or {} for o in out]


_REASONING = (
    "because",
    "therefore",
    "so that",
    "however",
    "for example",
    "first",
    "finally",
    "কারণ",
    "তাই",
    "যেমন",
    "তবে",
    "প্রথমত",
    "অবশেষে",
    "সুতরাং",
)
_SENT = re.compile(r"[.!?।]+")


def grade_essay(text: str) -> dict[str, Any]:
    """A transparent 0-10 rubric: length, sentences, paragraphs, vocabulary, reasoning words."""
    words = text.split()
    n = len(words)
    sentences = [s for s in _SENT.split(text) if s.strip()]
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    distinct = len({w.lower().strip(".,!?।") for w in words}) / max(n, 1)
    low = text.lower()
    reasoning = sum(low.count(w) for w in _REASONING)
    parts = {
        "length": min(n / 120.0, 1.0) * 3.0,
        "structure": min(len(sentences) / 6.0, 1.0) * 2.0 + (1.0 if len(paragraphs) >= 2 else 0.0),
        "vocabulary": min(distinct / 0.6, 1.0) * 2.0,
        "reasoning": min(reasoning / 3.0, 1.0) * 2.0,
    }
    score = round(sum(parts.values()), 1)
    feedback = []
    if n < 80:
        feedback.append(f"Develop your ideas further: {n} words, aim for at least 120.")
    if len(paragraphs) < 2:
        feedback.append("Split the essay into an introduction, a body and a conclusion.")
    if distinct < 0.5:
        feedback.append("Vary your vocabulary; several words repeat often.")
    if reasoning < 2:
        feedback.append("Explain why: link claims with reasons (because / therefore, কারণ / তাই).")
    if not feedback:
        feedback.append("Well organised and well argued; keep it up.")
    return {
        "score": score,
        "max_score": 10,
        "rubric": {k: round(v, 2) for k, v in parts.items()},
        "feedback": feedback,
        "words": n,
    }


class EssayGrader(ModelRunner):
    task = GRADE_TASK
    model = GRADE_MODEL

    def load(self) -> None:
        return None

    def info(self) -> RunnerInfo:
        return RunnerInfo(
            self.task, self.model, "cpu", "-", max_batch_size=32, preferred_min=8, max_queue_delay_ms=20.0
        )

    def check(self, inputs: Mapping[str, Any]) -> None:
        _text(inputs, self.task)

    def run_batch(self, inputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [grade_essay(str(x["text"])) for x in inputs]


class TorchCloudClassifier(ModelRunner):
    """The policy's cloud classifier served by the worker package's torch runners.

    Text → `gpu_worker.runners.classify.ClassifyRunner` (n-grams + MiniLM on torch, two heads);
    an edge embedding → `EmbeddingClassifyRunner` (an MLP over the embedding). Heads are trained at
    first load and cached in `cache_dir`.
    """

    task = QCLF_TASK
    model = QCLF_MODEL

    def __init__(self, cache_dir: Path) -> None:
        from gpu_worker.runners.classify import ClassifyRunner, EmbeddingClassifyRunner

        self.text = ClassifyRunner(cache_dir=cache_dir)
        self.emb = EmbeddingClassifyRunner(cache_dir=cache_dir)

    def load(self) -> None:
        self.text.load()
        self.emb.load()

    def info(self) -> RunnerInfo:
        i = self.text.info()
        return RunnerInfo(
            self.task, self.model, i.device, i.dtype, max_batch_size=32, preferred_min=8, max_queue_delay_ms=5.0
        )

    @staticmethod
    def _split(inputs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        if "embedding_f16" in inputs:
            return "emb", {"embedding_f16": inputs["embedding_f16"]}
        return "text", {"text": inputs.get("text"), "truncate": True}

    def check(self, inputs: Mapping[str, Any]) -> None:
        kind, x = self._split(inputs)
        (self.emb if kind == "emb" else self.text).check(x)

    def run_batch(self, inputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        parts = [self._split(x) for x in inputs]
        out: list[dict[str, Any]] = [{} for _ in inputs]
        for kind, runner in (("text", self.text), ("emb", self.emb)):
            idx = [i for i, (k, _) in enumerate(parts) if k == kind]
            if idx:
                for i, res in zip(idx, runner.run_batch([parts[i][1] for i in idx]), strict=True):
                    res = {k: v for k, v in res.items() if k != "scores"}
                    out[i] = {**res, "model": self.model, "input": "embedding" if kind == "emb" else "text"}
        return out


def cloud_runners(models_dir: Path, verify_key: str | None, cache_dir: Path, kind: str = "light") -> list[ModelRunner]:
    """`light`: the signed ONNX artifacts (fast to load); `full`: the worker package's torch runners."""
    if kind == "full":
        return [TorchCloudClassifier(cache_dir), EssayGrader()]
    return [CloudClassifier(models_dir, verify_key, cache_dir), EssayGrader()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hybrid.stack.cloud_worker")
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--zone", required=True)
    ap.add_argument("--keyring", required=True)
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--verify-key", default=None)
    ap.add_argument("--name", required=True)
    ap.add_argument("--health-port", type=int, default=0)
    ap.add_argument("--grace", type=float, default=10.0)
    ap.add_argument("--min-idle-ms", type=int, default=15_000)
    ap.add_argument("--cloud-models", choices=("light", "full"), default="light")
    a = ap.parse_args(argv)

    from prometheus_client import CollectorRegistry

    from broker.client import sealer_from_settings
    from broker.connection import connect
    from broker.consumer import Consumer
    from broker.settings import load_settings
    from gpu_worker.health import HealthServer
    from gpu_worker.worker import Worker

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    settings = load_settings(redis_url=a.redis_url, zone=a.zone, keyring=a.keyring)
    client = connect(a.redis_url)
    consumer = Consumer(
        client, sealer_from_settings(settings), a.zone, a.name, count=32, block_ms=200, min_idle_ms=a.min_idle_ms
    )
    registry = CollectorRegistry()
    models_dir = Path(a.models_dir)
    runners = cloud_runners(models_dir, a.verify_key, models_dir.parent / "cloud-heads", a.cloud_models)
    w = Worker(consumer, runners, registry=registry)
    health = HealthServer(
        lambda: w.ready.is_set() and not w.draining.is_set(),
        lambda: {"worker": w.name, "models": w.describe() if w.ready.is_set() else []},
        registry,
        port=a.health_port,
    ).start()
    try:
        w.load()
        print(json.dumps({"worker": a.name, "zone": a.zone, "ready": True}), file=sys.stderr, flush=True)
        w.run(stop, grace_s=a.grace)
    finally:
        health.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
