"""The cloud side of `hybrid up`: a GPU-worker process serving the policy's cloud models.

The routing policy names cloud models per task (`question-classification` → `qclf-xlmr-large`,
`essay-grading` → `essay-grader-large`); the edge agent seals jobs with those names. The worker
serves them with the worker package's runners (`gpu_worker.runners.registry.build_runners`), on its
consumer loop, batcher, drain and health server (`gpu_worker.worker.Worker`):

- `question-classification`: `full` — the `classify` runner (`ClassifyRunner`: n-grams + MiniLM,
  one head for text and one for an edge embedding), which answers to the policy's name through its
  runner alias `("question-classification", "*")`; `light` — the signed ONNX artifacts: text → the
  classifier on the fp32 MiniLM embedding (the edge runs the same head on int8), embedding
  (`embedding_f16`, sent instead of personal text) → a softmax head over the embedding alone.
  `light` exists for CI time only: a fresh data dir (every test session) trains the torch runner's
  heads at the first start of every worker at once (about 40 s each on a 2-core box); the ONNX
  head trains in a few seconds.
- `grade` / `rubric-minilm` and `feedback` / `smollm2-135m-instruct` (both builds): the real grading
  runners (MiniLM + the ridge fitted on `data/grading`; SmolLM2-135M-Instruct). Essays are graded
  through them by the grading driver (`hybrid.grading`, the code of `hybrid grade run`), which sends
  `{"question_id", "answer"}` for questions of the grading bank.
- `essay-grading` / `essay-grader-large` (what the edge seals for an essay sent to `/v1/requests`):
  served by the `grade` runner when the job names a `question_id` of the bank; the edge's jobs carry
  only the text, so they get a clear error result (no grade is made up).

Run by `hybrid up` as `python -m hybrid.stack.cloud_worker …` (one per worker of the pool).
"""

from __future__ import annotations

import argparse
import json
import os
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
    aliases = ((QCLF_TASK, "*"),)

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


class EssayGradingRunner(ModelRunner):
    """The policy's `essay-grading` task, served by the real `grade` runner — or refused clearly.

    A job naming a `question_id` of the grading bank is graded by `grade` / `rubric-minilm` (the
    essay in `answer`, or in `text` as the edge sends it). The edge's `/v1/requests` has no field for
    a question id, so its essay jobs get an error result that says how to grade essays; the grading
    driver (`hybrid grade run`) sends `grade` and `feedback` jobs with the question id instead."""

    task = GRADE_TASK
    model = GRADE_MODEL
    aliases = ((GRADE_TASK, "*"),)

    def __init__(self, grade: ModelRunner) -> None:
        self.grade = grade

    def load(self) -> None:
        self.grade.load()

    def info(self) -> RunnerInfo:
        i = self.grade.info()
        return RunnerInfo(self.task, self.model, i.device, i.dtype, i.max_batch_size, i.preferred_min, 20.0)

    def _as_grade(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(inputs, Mapping) or "question_id" not in inputs:
            raise InvalidInput(
                f"{self.task}: the grader ({self.grade.task}/{self.grade.model}) grades answers to questions of "
                "the grading bank and this job names no question_id; submit essays with `hybrid grade run` "
                "(tasks grade and feedback with question_id and answer)"
            )
        answer = inputs.get("answer", inputs.get("text"))
        extra = sorted(set(inputs) - {"question_id", "answer", "text"})
        if extra:
            raise InvalidInput(f"{self.task}: unknown field(s) {', '.join(extra)}; send question_id and answer")
        return {"question_id": inputs["question_id"], "answer": answer}

    def check(self, inputs: Mapping[str, Any]) -> None:
        self.grade.check(self._as_grade(inputs))

    def run_batch(self, inputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        out = self.grade.run_batch([self._as_grade(x) for x in inputs])
        return [{**o, "model": f"{self.grade.task}/{self.grade.model}"} for o in out]


def cloud_runners(
    models_dir: Path,
    verify_key: str | None,
    cache_dir: Path,
    kind: str = "light",
    *,
    feedback_tokens: int = 48,
) -> list[ModelRunner]:
    """The worker's runners: question classification (`full`: the torch `classify` runner under its
    policy alias; `light`: the signed ONNX artifacts), the real `grade` and `feedback` runners, and
    the extractive summarizer that answers the policy's `summarization` task.

    `cache_dir` is the root `build_runners` gets: the torch runners' heads are cached in
    `<cache_dir>/worker/`; it holds no signed manifests, so the MiniLM and SmolLM2 weights come from
    their packages."""
    from gpu_worker.runners.feedback import FeedbackRunner
    from gpu_worker.runners.registry import build_runners
    from gpu_worker.runners.summarize import SummarizeRunner

    names = ["grade", "feedback"] + (["classify"] if kind == "full" else [])
    built = build_runners(names, cache_dir)
    grade = built[("grade", "rubric-minilm")]
    feedback = built[("feedback", "smollm2-135m-instruct")]
    assert isinstance(feedback, FeedbackRunner)
    feedback.default_max_new_tokens = feedback_tokens
    qclf = built[("classify", "question-clf")] if kind == "full" else CloudClassifier(models_dir, verify_key, cache_dir)
    return [qclf, grade, feedback, EssayGradingRunner(grade), SummarizeRunner()]


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
    ap.add_argument("--feedback-tokens", type=int, default=48, help="feedback runner's default max_new_tokens")
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
    runners = cloud_runners(
        models_dir, a.verify_key, models_dir.parent / "cloud-heads", a.cloud_models, feedback_tokens=a.feedback_tokens
    )
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
