"""The cloud question classifier (`classify`) and its split-inference twin (`classify-embedding`).

The edge classifies the e-learning app's questions (labels of `data/questions/`) with a small linear
model; what it is unsure of comes here. This side may spend more, so it combines two models:

A. a joint model: a linear layer over hashed character n-grams 2-5 (across word boundaries) and
   word 1-2 grams (`textfeat.NgramFeaturizer`, tf-idf weighted), plus a linear layer over the
   all-MiniLM-L6-v2 sentence embedding, *gated by the probability that the text is English*: MiniLM
   is English-only, so for Bengali — in Bengali script or romanised ("kemon acho?") — the n-grams
   decide and the embedding stays out of the way. The gate is a third small linear model over the
   same n-grams, trained on the dataset's `lang` field (en vs bn);
B. two n-gram-only linear models, independently trained: B1 over the same char 2-5 grams, B2 over
   char 3-6 grams (word n-grams hurt Bengali here, so neither uses them).

The prediction is A for English (gate g = P(en)) and the normalised geometric mean of B1 and B2 for
Bengali: softmax(g·log A + (1-g)·(log B1 + log B2)/2). Both are trained once,
at load time, full-batch Adam with a fixed seed on `data/questions/train.jsonl` (a few seconds on a
CPU), and cached under the models directory keyed by the dataset's sha256, so every later load
reads the cache. Accuracy on `test.jsonl` per language is computed at training time, kept in the
cache and reported by `QuestionModels.metrics` (see docs/worker-models.md for the numbers).

`classify-embedding` / `question-head` is the split-inference path: the edge sends its (int8)
MiniLM embedding instead of the text. Its head is an MLP over the L2-normalised embedding, trained
on the fp32 embeddings of the same training set. Any scale of the vector is accepted (it is
normalised here), so a symmetric int8 quantisation can be sent as is.

Inputs:
- `classify`: `{"text": str, "truncate": bool = false}` (text over MiniLM's 256 word pieces →
  `InvalidInput` unless `truncate`; the n-gram part always sees the whole text), or an embedding as
  below (then the embedding head answers);
- `classify-embedding`: exactly one of `{"embedding": [384 numbers]}`, `{"embedding_f16": 768
  bytes}` (little-endian half floats) or `{"embedding_i8": 384 bytes}` (signed int8), and optionally
  `"dim": 384` (what the edge agent sends).
Outputs: `{"label": str, "confidence": float, "scores": {label: probability}, "input": "text" |
"embedding"}`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from broker.errors import ConfigError
from gpu_worker.runners.base import InvalidInput, ModelRunner, RunnerInfo
from gpu_worker.runners.device import DeviceChoice
from gpu_worker.runners.minilm import DIM, MiniLMEncoder, Verifier, shared_encoder
from gpu_worker.runners.textfeat import NgramConfig, NgramFeaturizer
from gpu_worker.runners.validate import optional_bool, reject_unknown, require_mapping, require_text, require_vector

HEAD_VERSION = 4
SEED = 20261127
NGRAMS = NgramConfig(buckets=1 << 18, char_min=2, char_max=5, word_min=1, word_max=0, cross_word=True)
NGRAMS_B2 = NgramConfig(buckets=1 << 18, char_min=3, char_max=6, word_min=1, word_max=0, cross_word=True)
EMB_SCALE = 4.0  # unit vectors have tiny components; scaling lets the same learning rate serve both parts
_BN = re.compile(r"[\u0980-\u09ff]")
_LATIN = re.compile(r"[A-Za-z]")


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def questions_dir(override: Path | None = None) -> Path:
    if override is not None:
        return Path(override)
    env = os.environ.get("HYB_QUESTIONS_DIR")
    return Path(env) if env else repo_root() / "data" / "questions"


def models_dir(override: Path | None = None) -> Path:
    """`HYB_MODELS_DIR/worker` when set, else `~/.cache/hybrid-ai-stack/models/worker`."""
    if override is not None:
        return Path(override)
    env = os.environ.get("HYB_MODELS_DIR")
    if env:
        return Path(env) / "worker"
    return Path.home() / ".cache" / "hybrid-ai-stack" / "models" / "worker"


def latin_share(text: str) -> float:
    """Latin letters / (Latin + Bengali letters): 1.0 for English, 0.0 for Bengali script."""
    bn = len(_BN.findall(text))
    la = len(_LATIN.findall(text))
    return la / (bn + la) if bn + la else 1.0


@dataclass
class QuestionSplit:
    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    langs: list[str] = field(default_factory=list)


def read_split(path: Path) -> QuestionSplit:
    split = QuestionSplit()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the question dataset {path}: {exc}") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, label, lang = row["text"], row["label"], row["lang"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{n}: not a question row (needs text, label, lang): {exc}") from exc
        split.texts.append(str(text))
        split.labels.append(str(label))
        split.langs.append(str(lang))
    if not split.texts:
        raise ConfigError(f"{path} holds no questions")
    return split


def per_language_accuracy(pred: Sequence[str], split: QuestionSplit) -> dict[str, float]:
    out: dict[str, float] = {}
    for lang in sorted(set(split.langs)):
        idx = [i for i, lg in enumerate(split.langs) if lg == lang]
        out[lang] = sum(pred[i] == split.labels[i] for i in idx) / len(idx)
    out["all"] = sum(p == y for p, y in zip(pred, split.labels, strict=True)) / len(split.labels)
    return out


class JointHead(nn.Module):
    """Model A: n-gram linear + latin-gated embedding linear."""

    def __init__(self, sparse_dim: int, n_classes: int) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(sparse_dim, n_classes, mode="sum")
        nn.init.zeros_(self.bag.weight)
        self.emb = nn.Linear(DIM, n_classes)

    def forward(
        self, idx: torch.Tensor, off: torch.Tensor, w: torch.Tensor, emb: torch.Tensor, gate: torch.Tensor
    ) -> torch.Tensor:
        out: torch.Tensor = self.bag(idx, off, per_sample_weights=w) + gate.unsqueeze(1) * self.emb(emb * EMB_SCALE)
        return out


class SparseHead(nn.Module):
    """Model B: n-gram linear only."""

    def __init__(self, sparse_dim: int, n_classes: int) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(sparse_dim, n_classes, mode="sum")
        nn.init.zeros_(self.bag.weight)
        self.bias = nn.Parameter(torch.zeros(n_classes))

    def forward(self, idx: torch.Tensor, off: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.bag(idx, off, per_sample_weights=w) + self.bias
        return out


class EmbeddingHead(nn.Module):
    """The split-inference head: MLP over a normalised MiniLM embedding."""

    def __init__(self, n_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(DIM, hidden), nn.GELU(), nn.Dropout(0.2), nn.Linear(hidden, n_classes))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(emb * EMB_SCALE)
        return out


def _fit(module: nn.Module, loss_fn: Any, epochs: int, lr: float, weight_decay: float) -> None:
    """Full-batch Adam. Single-threaded: these steps are tiny, and with more threads than free cores
    (several workers on one machine) each step spends most of its time waiting on the others."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _fit_steps(module, loss_fn, epochs, lr, weight_decay)
    finally:
        torch.set_num_threads(threads)


def _fit_steps(module: nn.Module, loss_fn: Any, epochs: int, lr: float, weight_decay: float) -> None:
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    module.train()
    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    module.eval()


class QuestionModels:
    """The trained heads and what they need at inference (labels, idf); loaded or trained once."""

    def __init__(
        self,
        labels: list[str],
        featurizer: NgramFeaturizer,
        joint: JointHead,
        sparse: SparseHead,
        lang: SparseHead,
        emb_head: EmbeddingHead,
        metrics: dict[str, Any],
        featurizer2: NgramFeaturizer,
        sparse2: SparseHead,
    ) -> None:
        self.labels = labels
        self.lang = lang
        self.featurizer2 = featurizer2
        self.sparse2 = sparse2
        self.featurizer = featurizer
        self.joint = joint
        self.sparse = sparse
        self.emb_head = emb_head
        self.metrics = metrics

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def text_probs(self, texts: Sequence[str], embeddings: torch.Tensor) -> torch.Tensor:
        idx, off, w = self.featurizer.transform(texts)
        gate = self.english_gate(idx, off, w)
        la = torch.log_softmax(self.joint(idx, off, w, embeddings, gate), dim=1)
        lb = torch.log_softmax(self.sparse(idx, off, w), dim=1)
        lb2 = torch.log_softmax(self.sparse2(*self.featurizer2.transform(texts)), dim=1)
        # English: the joint model; Bengali (script or romanised): the geometric mean of B1 and B2.
        g = gate.unsqueeze(1)
        return torch.softmax(g * la + (1 - g) * (lb + lb2) / 2, dim=1)

    @torch.no_grad()
    def english_gate(self, idx: torch.Tensor, off: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """P(text is English) per text, from the n-gram language model (index 1 = en)."""
        return torch.softmax(self.lang(idx, off, w), dim=1)[:, 1]

    @torch.no_grad()
    def embedding_probs(self, embeddings: torch.Tensor) -> torch.Tensor:
        emb = nn.functional.normalize(embeddings.to(torch.float32), p=2, dim=1)
        return torch.softmax(self.emb_head(emb), dim=1)

    def outputs(self, probs: torch.Tensor) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for p in probs.tolist():
            best = max(range(len(p)), key=p.__getitem__)
            rows.append(
                {
                    "label": self.labels[best],
                    "confidence": round(p[best], 6),
                    "scores": {lbl: round(v, 6) for lbl, v in zip(self.labels, p, strict=True)},
                }
            )
        return rows

    def predict(self, texts: Sequence[str], embeddings: torch.Tensor) -> list[str]:
        return [self.labels[i] for i in self.text_probs(texts, embeddings).argmax(dim=1).tolist()]

    # ------------------------------------------------------------------ training
    @classmethod
    def train(cls, train: QuestionSplit, test: QuestionSplit | None, encoder: MiniLMEncoder) -> QuestionModels:
        t0 = time.perf_counter()
        torch.manual_seed(SEED)
        labels = sorted(set(train.labels))
        index = {lbl: i for i, lbl in enumerate(labels)}
        y = torch.tensor([index[lbl] for lbl in train.labels])
        feat = NgramFeaturizer(NGRAMS).fit(train.texts)
        idx, off, w = feat.transform(train.texts)
        # Train over the buckets the training set uses only (a few tens of thousands, not 2^18): a
        # bucket no training text hits gets no gradient and stays zero anyway, so this is exact and
        # several times faster. The weights are scattered back into full-size bags afterwards.
        used, compact = torch.unique(idx, return_inverse=True)
        t_enc = time.perf_counter()
        emb = encoder.encode(train.texts)
        encode_s = time.perf_counter() - t_enc
        ce = nn.functional.cross_entropy
        y_lang = torch.tensor([1 if lg == "en" else 0 for lg in train.langs])
        lang_c = SparseHead(len(used), 2)
        _fit(lang_c, lambda: ce(lang_c(compact, off, w), y_lang), epochs=100, lr=0.1, weight_decay=1e-5)
        with torch.no_grad():
            gate = torch.softmax(lang_c(compact, off, w), dim=1)[:, 1]

        joint_c = JointHead(len(used), len(labels))
        _fit(joint_c, lambda: ce(joint_c(compact, off, w, emb, gate), y), epochs=150, lr=0.05, weight_decay=1e-5)
        sparse_c = SparseHead(len(used), len(labels))
        _fit(sparse_c, lambda: ce(sparse_c(compact, off, w), y), epochs=150, lr=0.1, weight_decay=1e-5)
        joint = JointHead(feat.dim, len(labels))
        sparse = SparseHead(feat.dim, len(labels))
        lang = SparseHead(feat.dim, 2)
        with torch.no_grad():
            lang.bag.weight[used] = lang_c.bag.weight
            lang.bias.copy_(lang_c.bias)
            joint.bag.weight[used] = joint_c.bag.weight
            joint.emb.load_state_dict(joint_c.emb.state_dict())
            sparse.bag.weight[used] = sparse_c.bag.weight
            sparse.bias.copy_(sparse_c.bias)
        for m in (joint, sparse, lang):
            m.eval()
        feat2 = NgramFeaturizer(NGRAMS_B2).fit(train.texts)
        idx2, off2, w2 = feat2.transform(train.texts)
        used2, compact2 = torch.unique(idx2, return_inverse=True)
        sparse2_c = SparseHead(len(used2), len(labels))
        _fit(sparse2_c, lambda: ce(sparse2_c(compact2, off2, w2), y), epochs=150, lr=0.1, weight_decay=1e-5)
        sparse2 = SparseHead(feat2.dim, len(labels))
        with torch.no_grad():
            sparse2.bag.weight[used2] = sparse2_c.bag.weight
            sparse2.bias.copy_(sparse2_c.bias)
        sparse2.eval()
        head = EmbeddingHead(len(labels))
        _fit(head, lambda: ce(head(emb), y), epochs=300, lr=0.01, weight_decay=1e-4)

        models = cls(labels, feat, joint, sparse, lang, head, {}, feat2, sparse2)
        metrics: dict[str, Any] = {
            "train_s": round(time.perf_counter() - t0, 2),
            "train_encode_s": round(encode_s, 2),
            "train_n": len(train.texts),
        }
        if test is not None:
            known = [i for i, lbl in enumerate(test.labels) if lbl in index]
            test = QuestionSplit(
                [test.texts[i] for i in known], [test.labels[i] for i in known], [test.langs[i] for i in known]
            )
            test_emb = encoder.encode(test.texts)
            metrics["test_n"] = len(test.texts)
            metrics["classify"] = per_language_accuracy(models.predict(test.texts, test_emb), test)
            emb_pred = [labels[i] for i in models.embedding_probs(test_emb).argmax(dim=1).tolist()]
            metrics["classify_embedding"] = per_language_accuracy(emb_pred, test)
        models.metrics = metrics
        return models

    # ------------------------------------------------------------------ cache
    def save(self, path: Path) -> None:
        assert self.featurizer.idf is not None
        assert self.featurizer2.idf is not None
        blob = {
            "version": HEAD_VERSION,
            "labels": self.labels,
            "ngrams": self.featurizer.config.to_dict(),
            "idf": torch.from_numpy(self.featurizer.idf),
            "ngrams2": self.featurizer2.config.to_dict(),
            "idf2": torch.from_numpy(self.featurizer2.idf),
            "joint": _pack(self.joint.state_dict()),
            "sparse": _pack(self.sparse.state_dict()),
            "sparse2": _pack(self.sparse2.state_dict()),
            "lang": _pack(self.lang.state_dict()),
            "emb_head": self.emb_head.state_dict(),
            "metrics": json.dumps(self.metrics),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(blob, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> QuestionModels:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("version") != HEAD_VERSION:
            raise ConfigError(f"{path}: head version {blob.get('version')}, this build reads {HEAD_VERSION}")
        labels = list(blob["labels"])
        feat = NgramFeaturizer(NgramConfig(**blob["ngrams"]), idf=blob["idf"].numpy())
        joint = JointHead(feat.dim, len(labels))
        joint.load_state_dict(_unpack(blob["joint"]))
        sparse = SparseHead(feat.dim, len(labels))
        sparse.load_state_dict(_unpack(blob["sparse"]))
        lang = SparseHead(feat.dim, 2)
        lang.load_state_dict(_unpack(blob["lang"]))
        feat2 = NgramFeaturizer(NgramConfig(**blob["ngrams2"]), idf=blob["idf2"].numpy())
        sparse2 = SparseHead(feat2.dim, len(labels))
        sparse2.load_state_dict(_unpack(blob["sparse2"]))
        head = EmbeddingHead(len(labels))
        head.load_state_dict(blob["emb_head"])
        for m in (joint, sparse, sparse2, lang, head):
            m.eval()
        return cls(labels, feat, joint, sparse, lang, head, json.loads(blob["metrics"]), feat2, sparse2)


def _pack(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with each bag's weight stored as its non-zero rows (most hashed buckets are unused)."""
    out = dict(state)
    weight = out.pop("bag.weight")
    rows = torch.nonzero(weight.abs().sum(dim=1)).squeeze(1)
    out["bag.rows"], out["bag.values"] = rows, weight[rows].clone()
    out["bag.shape"] = torch.tensor(weight.shape)
    return out


def _unpack(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(state)
    rows, values, shape = out.pop("bag.rows"), out.pop("bag.values"), out.pop("bag.shape")
    weight = torch.zeros(tuple(int(x) for x in shape.tolist()), dtype=values.dtype)
    weight[rows] = values
    out["bag.weight"] = weight
    return out


def dataset_digest(data_dir: Path) -> str:
    h = hashlib.sha256()
    cfg = json.dumps([NGRAMS.to_dict(), NGRAMS_B2.to_dict()], sort_keys=True)
    h.update(f"head-v{HEAD_VERSION}|{cfg}|seed{SEED}\n".encode())
    for name in ("train.jsonl", "test.jsonl"):
        p = data_dir / name
        h.update(name.encode())
        h.update(p.read_bytes() if p.exists() else b"")
    return h.hexdigest()


_models: dict[str, QuestionModels] = {}
_models_lock = threading.Lock()


def question_models(
    encoder: MiniLMEncoder, data_dir: Path | None = None, cache_dir: Path | None = None
) -> QuestionModels:
    """The process-wide heads: from the cache when it holds this dataset's, else trained and cached."""
    ddir = questions_dir(data_dir)
    train_path = ddir / "train.jsonl"
    if not train_path.exists():
        # An installed worker without the repository's data: the newest cached heads, if any.
        cached = sorted((models_dir(cache_dir) / "question-clf").glob("*.pt"), key=lambda p: p.stat().st_mtime)
        if not cached:
            raise ConfigError(
                f"no question dataset at {ddir} (train.jsonl) and no trained heads in "
                f"{models_dir(cache_dir) / 'question-clf'}; set HYB_QUESTIONS_DIR to the directory that holds it"
            )
        with _models_lock:
            key = str(cached[-1])
            if key not in _models:
                _models[key] = QuestionModels.load(cached[-1])
                _models[key].metrics["cache"] = key
            return _models[key]
    digest = dataset_digest(ddir)
    cache = models_dir(cache_dir) / "question-clf" / f"{digest[:24]}.pt"
    with _models_lock:
        key = str(cache)
        if key in _models:
            return _models[key]
        if cache.exists():
            try:
                models = QuestionModels.load(cache)
            except (ConfigError, RuntimeError, KeyError, ValueError, OSError):
                models = None
        else:
            models = None
        if models is None:
            test_path = ddir / "test.jsonl"
            test = read_split(test_path) if test_path.exists() else None
            models = QuestionModels.train(read_split(train_path), test, encoder)
            models.save(cache)
        models.metrics["cache"] = str(cache)
        _models[key] = models
        return models


class _QuestionRunnerBase(ModelRunner):
    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        cache_dir: Path | None = None,
        encoder_path: Path | None = None,
        choice: DeviceChoice | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self._data_dir = data_dir
        self._cache_dir = cache_dir
        self._encoder_path = encoder_path
        self._choice = choice
        self._verifier = verifier
        self.encoder: MiniLMEncoder | None = None
        self.models: QuestionModels | None = None
        self.load_s = 0.0

    def load(self) -> None:
        if self.models is not None:
            return
        t0 = time.perf_counter()
        self.encoder = shared_encoder(self._encoder_path, self._choice, self._verifier)
        self.models = question_models(self.encoder, self._data_dir, self._cache_dir)
        self.load_s = time.perf_counter() - t0

    def _ready(self) -> tuple[MiniLMEncoder, QuestionModels]:
        if self.encoder is None or self.models is None:
            raise RuntimeError(f"{self.task}/{self.model} used before load()")
        return self.encoder, self.models

    def info(self) -> RunnerInfo:
        if self.encoder is not None:
            return RunnerInfo(self.task, self.model, self.encoder.choice.device_name, self.encoder.choice.dtype_name)
        return RunnerInfo(self.task, self.model, "cpu", "float32")


EMBEDDING_FIELDS = ("embedding", "embedding_f16", "embedding_i8")


def parse_embedding(inputs: Mapping[str, Any], task: str) -> np.ndarray:
    """The one embedding of a job (float list, f16 bytes or int8 bytes), checked; `dim` may say 384."""
    given = [f for f in EMBEDDING_FIELDS if f in inputs]
    if len(given) != 1:
        raise InvalidInput(f"{task}: send exactly one of {', '.join(EMBEDDING_FIELDS)} (got {len(given)})")
    if "dim" in inputs and (isinstance(inputs["dim"], bool) or inputs["dim"] != DIM):
        raise InvalidInput(f"{task}: 'dim' must be {DIM} (all-MiniLM-L6-v2), got {inputs['dim']!r}")
    name = given[0]
    value = inputs[name]
    if name == "embedding":
        vec = np.asarray(require_vector(value, name, task, DIM), dtype=np.float32)
    else:
        dtype, width = ("<f2", 2) if name == "embedding_f16" else ("i1", 1)
        if not isinstance(value, bytes | bytearray):
            raise InvalidInput(f"{task}: {name!r} must be bytes, got {type(value).__name__}")
        if len(value) != DIM * width:
            raise InvalidInput(f"{task}: {name!r} must be {DIM * width} bytes, got {len(value)}")
        vec = np.frombuffer(bytes(value), dtype=dtype).astype(np.float32)
        if not np.all(np.isfinite(vec)):
            raise InvalidInput(f"{task}: {name!r} holds a value that is not finite")
    norm = float(np.linalg.norm(vec))
    if not math.isfinite(norm) or norm == 0.0:
        raise InvalidInput(f"{task}: the embedding is all zeros (or overflows); nothing to classify")
    return vec


class ClassifyRunner(_QuestionRunnerBase):
    """`classify` / `question-clf`: text → label, confidence, scores.

    A job that carries an embedding instead of text (what the edge sends for an embedding-only
    offload: `{"embedding_f16": …, "dim": 384}`) is answered by the embedding head, so one (task,
    model) serves both forms; `input` in the output says which was used."""

    task = "classify"
    model = "question-clf"
    aliases = (("question-classification", "*"),)  # the routing policy's task (any of its cloud models)
    FIELDS = ("text", "truncate", *EMBEDDING_FIELDS, "dim")

    def check(self, inputs: Mapping[str, Any]) -> None:
        self._parse(inputs)

    def _parse(self, inputs: Mapping[str, Any]) -> str | np.ndarray:
        enc, _ = self._ready()
        inputs = require_mapping(inputs, self.task)
        reject_unknown(inputs, self.FIELDS, self.task)
        if "text" not in inputs and any(f in inputs for f in EMBEDDING_FIELDS):
            return parse_embedding(inputs, self.task)
        text = require_text(inputs, "text", self.task)
        if any(f in inputs for f in (*EMBEDDING_FIELDS, "dim")):
            raise InvalidInput(f"{self.task}: send text or an embedding, not both")
        if not optional_bool(inputs, "truncate", self.task):
            n = enc.count_tokens([text])[0]
            if n > enc.max_tokens:
                raise InvalidInput(
                    f"{self.task}: text is {n} word pieces, over the model's context of {enc.max_tokens}; "
                    "shorten it or send truncate: true"
                )
        return text

    def run_batch(self, inputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        enc, models = self._ready()
        parsed = [self._parse(x) for x in inputs]
        out: list[dict[str, Any]] = [{} for _ in parsed]
        text_idx = [i for i, p in enumerate(parsed) if isinstance(p, str)]
        emb_idx = [i for i, p in enumerate(parsed) if not isinstance(p, str)]
        if text_idx:
            texts = [str(parsed[i]) for i in text_idx]
            for i, row in zip(text_idx, models.outputs(models.text_probs(texts, enc.encode(texts))), strict=True):
                out[i] = {**row, "input": "text"}
        if emb_idx:
            vecs = torch.from_numpy(np.stack([np.asarray(parsed[i]) for i in emb_idx]))
            for i, row in zip(emb_idx, models.outputs(models.embedding_probs(vecs)), strict=True):
                out[i] = {**row, "input": "embedding"}
        return out


class EmbeddingClassifyRunner(_QuestionRunnerBase):
    """`classify-embedding` / `question-head`: an edge-computed embedding → label (no text leaves the device)."""

    task = "classify-embedding"
    model = "question-head"
    FIELDS = (*EMBEDDING_FIELDS, "dim")

    def check(self, inputs: Mapping[str, Any]) -> None:
        self._parse(inputs)

    def _parse(self, inputs: Mapping[str, Any]) -> np.ndarray:
        inputs = require_mapping(inputs, self.task)
        reject_unknown(inputs, self.FIELDS, self.task)
        return parse_embedding(inputs, self.task)

    def run_batch(self, inputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        _, models = self._ready()
        vecs = np.stack([self._parse(x) for x in inputs])
        return [{**row, "input": "embedding"} for row in models.outputs(models.embedding_probs(torch.from_numpy(vecs)))]


__all__ = [
    "ClassifyRunner",
    "EmbeddingClassifyRunner",
    "QuestionModels",
    "QuestionSplit",
    "latin_share",
    "models_dir",
    "parse_embedding",
    "per_language_accuracy",
    "question_models",
    "questions_dir",
    "read_split",
]
