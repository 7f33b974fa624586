"""What the edge agent runs: verified models, loaded into onnxruntime / numpy. No torch, no transformers.

Interface (stable; the request path and the HTTP API code against it):

    models = EdgeModels.load(models_dir)          # verifies every manifest first (Ed25519)
    models.embed(["text", ...])                   # (n, 384) float32, L2-normalised, int8 ONNX MiniLM
    models.classify(["text", ...])                # [(label, confidence), ...] main classifier
    models.fallback(["text", ...])                # [(label, confidence), ...] tiny distilled classifier
    models.labels                                 # intent labels, in output order
    models.versions                               # {model name: version loaded}
    models.with_classifier_version("1.1.0")       # another (verified) classifier version, same embedder

Models (names as in the registry):

- `minilm-l6-int8`: all-MiniLM-L6-v2 exported to ONNX with mean pooling and L2 normalisation in the
  graph, weights dynamically quantized to int8 (per channel); `tokenizer.json` beside it.
- `qclf-edge`: softmax regression over hashed character/word n-grams (see `features`) concatenated
  with the MiniLM embedding; confidence = the top softmax probability.
- `qclf-fallback`: the distilled fallback, hashed n-grams only, int8 weights; needs no embedder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from broker.errors import ConfigError
from broker.registry import META_FILE, ModelRegistry, load_verify_key
from edge_agent.models.features import HashedNgrams, latin_share

__all__ = [
    "CLASSIFIER",
    "EDGE_MODELS",
    "EMBEDDER",
    "EMBEDDER_FP32",
    "FALLBACK",
    "EdgeModels",
    "HashedLinearClassifier",
    "OnnxEmbedder",
    "default_models_dir",
]

EMBEDDER = "minilm-l6-int8"
EMBEDDER_FP32 = "minilm-l6-fp32"
CLASSIFIER = "qclf-edge"
FALLBACK = "qclf-fallback"
EDGE_MODELS = (EMBEDDER, CLASSIFIER, FALLBACK)
EMBED_DIM = 384


def default_models_dir() -> Path:
    env = os.environ.get("HYB_MODELS_DIR")
    return Path(env).expanduser() if env else Path("~/.cache/hybrid-ai-stack/models").expanduser()


class OnnxEmbedder:
    """Sentence embeddings from an ONNX MiniLM graph that outputs pooled, L2-normalised vectors."""

    def __init__(self, model_dir: Path, *, threads: int = 1, max_length: int = 128) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.inputs = {i.name for i in self.session.get_inputs()}

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        encs = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64)}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        return feed

    def embed(self, texts: Sequence[str], *, batch_size: int = 1) -> np.ndarray:
        """Pooled, L2-normalised embeddings. One text per run by default: dynamic int8 quantization
        scales activations per tensor, padding included, so a batched text would depend (slightly) on
        its neighbours; on CPU single runs of short texts cost about the same as batches."""
        if not texts:
            return np.zeros((0, EMBED_DIM), dtype=np.float32)
        if len(texts) == 1 or batch_size >= len(texts):
            return np.asarray(self.session.run(None, self.encode(texts))[0], dtype=np.float32)
        # many texts: batches of similar length, so little compute goes to padding
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), EMBED_DIM), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self.session.run(None, self.encode([texts[i] for i in chunk]))[0]
        return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


class HashedLinearClassifier:
    """Softmax regression over hashed n-grams (and optionally the sentence embedding), in numpy.

    Files: `weights.npz` with `w_hash` (buckets x classes; float32, or int8 with per-class `w_hash_scale`),
    optional `w_emb` (384 x classes), `bias`; `model.json` metadata with labels, feature settings and the
    softmax temperature.
    """

    def __init__(
        self,
        labels: Sequence[str],
        features: HashedNgrams,
        w_hash: np.ndarray,
        bias: np.ndarray,
        *,
        w_emb: np.ndarray | None = None,
        temperature: float = 1.0,
    ) -> None:
        self.labels = list(labels)
        self.features = features
        self.w_hash = np.asarray(w_hash, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)
        self.w_emb = None if w_emb is None else np.asarray(w_emb, dtype=np.float32)
        self.temperature = float(temperature)

    @property
    def uses_embedding(self) -> bool:
        return self.w_emb is not None

    @classmethod
    def load(cls, model_dir: Path) -> HashedLinearClassifier:
        meta = json.loads((model_dir / META_FILE).read_text())["metadata"]
        with np.load(model_dir / "weights.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
        w_hash = arrays["w_hash"].astype(np.float32)
        if "w_hash_scale" in arrays:
            w_hash = w_hash * arrays["w_hash_scale"].astype(np.float32)[None, :]
        return cls(
            meta["labels"],
            HashedNgrams(**meta["features"]),
            w_hash,
            arrays["bias"],
            w_emb=arrays["w_emb"] if arrays.get("w_emb") is not None and arrays["w_emb"].size else None,
            temperature=float(meta.get("temperature", 1.0)),
        )

    def logits(self, texts: Sequence[str], embeddings: np.ndarray | None = None) -> np.ndarray:
        out = np.tile(self.bias, (len(texts), 1))
        for row, text in enumerate(texts):
            idx, val = self.features.sparse(text)
            if idx.size:
                out[row] += val @ self.w_hash[idx]
        if self.w_emb is not None:
            if embeddings is None:
                raise ValueError("this classifier needs sentence embeddings")
            gate = np.array([latin_share(t) for t in texts], dtype=np.float32)[:, None]
            out += (gate * embeddings) @ self.w_emb
        return out

    def proba(self, texts: Sequence[str], embeddings: np.ndarray | None = None) -> np.ndarray:
        return _softmax(self.logits(texts, embeddings) / self.temperature)

    def predict(self, texts: Sequence[str], embeddings: np.ndarray | None = None) -> list[tuple[str, float]]:
        p = self.proba(texts, embeddings)
        top = p.argmax(axis=1)
        return [(self.labels[int(i)], float(p[r, i])) for r, i in enumerate(top)]


def gated_embeddings(clf: HashedLinearClassifier, embedder: OnnxEmbedder, texts: Sequence[str]) -> np.ndarray | None:
    """Embeddings only where `clf` uses them: Bengali-script texts get zeros and skip the ONNX run."""
    if clf.w_emb is None:
        return None
    out = np.zeros((len(texts), EMBED_DIM), dtype=np.float32)
    need = [i for i, t in enumerate(texts) if latin_share(t) > 0]
    if need:
        out[need] = embedder.embed([texts[i] for i in need])
    return out


class EdgeModels:
    """The three edge models, verified and loaded."""

    labels: list[str]
    versions: dict[str, str]

    def __init__(
        self,
        embedder: OnnxEmbedder,
        classifier: HashedLinearClassifier,
        fallback_model: HashedLinearClassifier,
        versions: Mapping[str, str],
        models_dir: Path,
        *,
        verify_key: Any = None,
    ) -> None:
        self.embedder = embedder
        self.classifier = classifier
        self.fallback_model = fallback_model
        self.labels = list(classifier.labels)
        self.versions = dict(versions)
        self.models_dir = models_dir
        self.verify_key = verify_key

    @classmethod
    def load(
        cls,
        models_dir: Path | str | None = None,
        *,
        verify_key: Any = None,
        versions: Mapping[str, str] | None = None,
        threads: int = 1,
    ) -> EdgeModels:
        """Verify and load the active version of each edge model (or the `versions` asked for).

        `verify_key`: an Ed25519 public key, a path to a PEM public key, or None for the default trust
        (see `broker.registry.load_verify_key`). Raises a `broker.registry.ModelVerificationError` (a
        HybridError) for a tampered, unsigned or wrongly signed artifact, `ModelRegistryError` for a
        model that is not installed, `ConfigError` for a missing models dir or trust key.
        """
        root = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
        if not root.is_dir():
            raise ConfigError(
                f"models directory {root} does not exist: build it with `hybrid models build --out {root}`"
            )
        public = load_verify_key(verify_key)
        registry = ModelRegistry(root)
        wanted = dict(versions or {})
        verified = {name: registry.verify(name, wanted.get(name), verify_key=public) for name in EDGE_MODELS}
        embedder = OnnxEmbedder(verified[EMBEDDER].path, threads=threads)
        classifier = HashedLinearClassifier.load(verified[CLASSIFIER].path)
        fallback_model = HashedLinearClassifier.load(verified[FALLBACK].path)
        if fallback_model.labels != classifier.labels:
            raise ConfigError(f"{FALLBACK} and {CLASSIFIER} disagree on labels; rebuild the models")
        return cls(
            embedder,
            classifier,
            fallback_model,
            {n: v.manifest.version for n, v in verified.items()},
            root,
            verify_key=public,
        )

    def with_classifier_version(self, version: str) -> EdgeModels:
        """These models with version `version` of the classifier instead, verified (same trust as `load`)
        and loaded; the embedder and the fallback are shared. Raises as `load` does."""
        if version == self.versions.get(CLASSIFIER):
            return self
        verified = ModelRegistry(self.models_dir).verify(CLASSIFIER, version, verify_key=self.verify_key)
        classifier = HashedLinearClassifier.load(verified.path)
        if classifier.labels != self.labels:
            raise ConfigError(f"{CLASSIFIER} {version} has other labels than the loaded one; it cannot serve")
        versions = {**self.versions, CLASSIFIER: verified.manifest.version}
        return EdgeModels(
            self.embedder, classifier, self.fallback_model, versions, self.models_dir, verify_key=self.verify_key
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        """(n, 384) float32 L2-normalised sentence embeddings from the int8 ONNX MiniLM."""
        return self.embedder.embed(texts)

    def classify(self, texts: list[str]) -> list[tuple[str, float]]:
        """(label, confidence) per text from the main classifier (n-grams + MiniLM embedding)."""
        if not texts:
            return []
        return self.classifier.predict(texts, self.gated_embeddings(texts))

    def gated_embeddings(self, texts: list[str]) -> np.ndarray | None:
        """Embeddings of the texts the classifier weighs them for (Latin letters); zeros for the rest."""
        return gated_embeddings(self.classifier, self.embedder, texts)

    def fallback(self, texts: list[str]) -> list[tuple[str, float]]:
        """(label, confidence) per text from the tiny distilled fallback (n-grams only, no embedder)."""
        if not texts:
            return []
        return self.fallback_model.predict(texts)
