"""Edge models: the int8 ONNX MiniLM embedder, the bilingual question classifier and its distilled fallback.

Only `runtime` (onnxruntime, tokenizers, numpy) is imported by the agent at run time; `build` imports
torch lazily and is called only by `hybrid models build`.
"""

from edge_agent.models.runtime import EdgeModels

__all__ = ["EdgeModels"]
