"""Model runners of the GPU worker (see docs/worker-models.md).

Nothing is imported here, so `gpu_worker.runners.base` and `.builtin` stay usable without torch; the
model runners (torch, transformers) load through `gpu_worker.runners.registry.build_runners`.
"""

__all__: list[str] = []
