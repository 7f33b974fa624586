"""What the edge agent runs: verified models, loaded into onnxruntime / numpy. No torch, no transformers.

Interface (stable; the request path and the HTTP API code against it):

    models = EdgeModels.load(models_dir)          # verifies every manifest first (Ed25519)
    models.embed(["text", ...])                   # (n, 384) float32, L2-normalised, int8 ONNX MiniLM
    models.classify(["text", ...])                # [(label, confidence), ...] main classifier
    models.fallback(["text", ...])                # [(label, confidence), ...] tiny distilled classifier
    models.labels                                 # intent labels, in output order
    models.versions                               # {model name: version loaded}
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EdgeModels"]


class EdgeModels:
    labels: list[str]
    versions: dict[str, str]

    @classmethod
    def load(
        cls,
        models_dir: Path | str,
        *,
        verify_key: Any = None,
        versions: Mapping[str, str] | None = None,
    ) -> EdgeModels:
        """Verify and load the active version of each edge model (or the `versions` asked for).

        `verify_key`: an Ed25519 public key, a path to a public key file, or None for the default trust
        (env HYB_MODEL_VERIFY_KEY, else ~/.config/hybrid-ai-stack/model-signing.pub). Raises a
        `broker.registry.ModelVerificationError` (a HybridError) for a tampered, unsigned or wrongly
        signed artifact, `broker.errors.ConfigError` for a missing models dir or trust key.
        """
        raise NotImplementedError

    def embed(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def classify(self, texts: list[str]) -> list[tuple[str, float]]:
        raise NotImplementedError

    def fallback(self, texts: list[str]) -> list[tuple[str, float]]:
        raise NotImplementedError
