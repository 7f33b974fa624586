"""Worker benchmark: does the full path keep the model busy, and does batching pay?

    python -m benchmarks.worker [--quick] [--out benchmarks/results/worker.json]

Same run, same texts (student questions and short answers, Bengali and English):

1. `model_per_s`: the `embed` runner alone (tokenize → all-MiniLM-L6-v2 → pool → lists) at batch
   1, 8, 16 and 32 — the ceiling;
2. `worker_per_s`: the same texts as sealed jobs through the whole path — submitted to a redis-server
   started here, consumed by a `Worker` (dynamic batcher, max batch 32), results sealed, stored and
   fetched by the client. Jobs are queued before the clock starts, models are loaded before it
   starts: what is timed is the worker draining the backlog. Target: ≥ 0.9 x `model_per_s["32"]`;
3. `feedback_tokens_per_s`: new tokens/s of the SmolLM2-135M feedback runner at batch 1 and 8
   (greedy, left padding, every row generating the same number of tokens). Target: batch 8 ≥ 3.5 x
   batch 1. `feedback_useful_tokens_per_s`: the same on eight different answers through
   `run_batch`, rows stopping at their own end (a batch lasts as long as its longest row).

The device (CUDA with fp16/bf16 when present, else CPU fp32) is chosen by the runners and reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from benchmarks.report import machine, write_result
from broker.client import Client
from broker.connection import connect
from broker.consumer import Consumer
from broker.embedded import EmbeddedRedis
from broker.envelope import Envelope
from broker.keyring import LocalKeyring
from broker.message import JobSpec, Sealer

RESULTS = Path(__file__).with_name("results") / "worker.json"
BATCH_SIZES = (1, 8, 16, 32)
TARGET_WORKER_RATIO = 0.9
TARGET_FEEDBACK_RATIO = 3.5
console = Console(stderr=True)

_EN = [
    "What is the difference between speed and velocity?",
    "When will the results of the half-yearly exam be published?",
    "Photosynthesis turns light energy into chemical energy stored in glucose.",
    "How do I reset the password of my student account?",
    "Explain why the sky looks blue during the day but red at sunset.",
    "The mitochondria release energy from food through cellular respiration.",
]
_BN = [
    "গতি আর বেগের মধ্যে পার্থক্য কী?",
    "অর্ধবার্ষিক পরীক্ষার ফল কবে প্রকাশিত হবে?",
    "সালোকসংশ্লেষণে আলোর শক্তি রাসায়নিক শক্তিতে পরিণত হয়।",
    "আমার অ্যাকাউন্টের পাসওয়ার্ড কীভাবে বদলাব?",
    "দিনের বেলা আকাশ নীল আর সূর্যাস্তে লাল দেখায় কেন?",
    "মাইটোকন্ড্রিয়া কোষীয় শ্বসনের মাধ্যমে শক্তি মুক্ত করে।",
]


def texts(n: int) -> list[str]:
    pool = [t for pair in zip(_EN, _BN, strict=True) for t in pair]
    return [f"{pool[i % len(pool)]} ({i})" for i in range(n)]


def bare_model(runner: Any, sample: list[str], seconds: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for bs in BATCH_SIZES:
        batch = [{"text": t} for t in sample[:bs]]
        runner.run_batch(batch)  # warm-up at this shape
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            runner.run_batch(batch)
            done += bs
        out[str(bs)] = done / (time.perf_counter() - started)
    return out


def full_path(runner: Any, sample: list[str], n_jobs: int) -> dict[str, Any]:
    from gpu_worker.batcher import BatchPolicy
    from gpu_worker.worker import Worker

    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as server:
        ring = Path(tmp) / "keyring.json"
        LocalKeyring.init_zone(ring, "bench")
        sealer = Sealer(Envelope(LocalKeyring(ring, zones=["bench"])))
        r = connect(server.url)
        client = Client(r, sealer, "bench")
        ids = client.submit_many(
            JobSpec(task="embed", inputs={"text": sample[i % len(sample)]}, lane="batch") for i in range(n_jobs)
        )
        consumer = Consumer(r, sealer, "bench", "bench-worker", count=64, block_ms=100)
        policy = BatchPolicy(max_batch_size=32, preferred_min=32, max_queue_delay_ms=5, max_queue=256)
        worker = Worker(consumer, [runner], max_in_flight=128, policies={(runner.task, runner.model): policy})
        worker.load()  # the shared encoder is loaded already: this only builds the batcher
        stop = threading.Event()
        started = time.perf_counter()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        results = client.wait_all(ids, timeout=600)
        elapsed = time.perf_counter() - started
        stop.set()
        thread.join(30)
        ok = sum(1 for x in results.values() if x.status == "ok")
        sizes = worker.stats.batch_sizes
        return {
            "worker_per_s": n_jobs / elapsed,
            "jobs": n_jobs,
            "ok": ok,
            "mean_batch": sum(k * v for k, v in sizes.items()) / max(sum(sizes.values()), 1),
            "busy_fraction": worker.stats.busy_s / elapsed,
        }


def feedback(tokens: int, rounds: int) -> dict[str, Any]:
    """Generation throughput two ways: the runner's `tokens_per_s` (one prompt repeated, every row made
    to generate `tokens` new tokens: what batching buys the hardware), and `run_batch` on eight
    different answers, where rows stop at their own end-of-text and a batch lasts as long as its
    longest row (what a batch of real jobs yields)."""
    from gpu_worker.runners.feedback import FeedbackRunner

    runner = FeedbackRunner()
    runner.load()
    base = {"question": "Why do we see lightning before we hear thunder?", "max_new_tokens": tokens}
    answers = [
        "Because light travels faster than sound.",
        "আলো শব্দের চেয়ে অনেক দ্রুত চলে, তাই আগে বিদ্যুৎ দেখি।",
        "The sound is slower.",
        "Light moves at 300000 km per second and sound only 343 m per second.",
        "বজ্রপাতের শব্দ পরে আসে কারণ শব্দের বেগ কম।",
        "I think thunder happens later.",
        "Light is faster.",
        "Because of the speed difference of light and sound in air.",
    ]
    forced: dict[str, float] = {}
    useful: dict[str, float] = {}
    for bs in (1, 8):
        runner.tokens_per_s(bs, 4)  # warm-up at this shape
        forced[str(bs)] = statistics.median(runner.tokens_per_s(bs, tokens) for _ in range(rounds))
        batch = [{**base, "answer": a} for a in answers[:bs]]
        new_tokens, started = 0, time.perf_counter()
        for _ in range(rounds):
            new_tokens += sum(int(o["tokens"]) for o in runner.run_batch(batch))
        useful[str(bs)] = new_tokens / (time.perf_counter() - started)
    info = runner.info()
    return {"feedback_tokens_per_s": forced, "useful": useful, "device": info.device, "dtype": info.dtype}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="shorter timings (about a minute on 2 CPU cores)")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"JSON result file (default {RESULTS})")
    args = ap.parse_args(argv)
    seconds, n_jobs, fb_tokens, fb_rounds = (3.0, 768, 24, 1) if args.quick else (8.0, 3072, 32, 3)

    from gpu_worker.runners.minilm import EmbedRunner

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("loading all-MiniLM-L6-v2", total=4)
        runner = EmbedRunner()
        runner.load()
        info = runner.info()
        progress.update(task, advance=1, description=f"bare model on {info.device} ({info.dtype})")
        sample = texts(64)
        model = bare_model(runner, sample, seconds)
        progress.update(task, advance=1, description=f"full path: {n_jobs} sealed jobs through Redis and the worker")
        path = full_path(runner, sample, n_jobs)
        progress.update(task, advance=1, description="feedback generation (SmolLM2-135M)")
        fb = feedback(fb_tokens, fb_rounds)
        progress.update(task, advance=1)

    worker_ratio = path["worker_per_s"] / model["32"]
    tps = fb["feedback_tokens_per_s"]
    fb_ratio = tps["8"] / tps["1"]
    result: dict[str, Any] = {
        "benchmark": "worker",
        "quick": args.quick,
        "config": {
            **machine(),
            "device": info.device,
            "dtype": info.dtype,
            "feedback_device": fb["device"],
            "feedback_max_new_tokens": fb_tokens,
            "jobs": n_jobs,
            "seconds_per_batch_size": seconds,
        },
        "model_per_s": {k: round(v, 1) for k, v in model.items()},
        "worker_per_s": round(path["worker_per_s"], 1),
        "worker_over_model_32": round(worker_ratio, 3),
        "worker_mean_batch": round(path["mean_batch"], 1),
        "worker_busy_fraction": round(path["busy_fraction"], 3),
        "feedback_tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
        "feedback_useful_tokens_per_s": {k: round(v, 1) for k, v in fb["useful"].items()},
        "feedback_8_over_1": round(fb_ratio, 2),
        "embed_32_over_1": round(model["32"] / model["1"], 2),
        "targets": {
            "worker_over_model_32": TARGET_WORKER_RATIO,
            "feedback_8_over_1": TARGET_FEEDBACK_RATIO,
            "embed_32_over_1_on_gpu": 10,
        },
        "met": {
            "worker_over_model_32": worker_ratio >= TARGET_WORKER_RATIO,
            "feedback_8_over_1": fb_ratio >= TARGET_FEEDBACK_RATIO,
        },
        "all_ok": path["ok"] == n_jobs,
    }
    write_result(args.out, result)

    table = Table(title=f"worker benchmark ({info.device}, {info.dtype})")
    for col in ("measure", "value", "baseline (same run)", "ratio", "target"):
        table.add_column(col, justify="right" if col != "measure" else "left")
    for bs in BATCH_SIZES:
        table.add_row(f"embed, model alone, batch {bs}", f"{model[str(bs)]:,.0f}/s", f"batch 1: {model['1']:,.0f}/s",
                      f"{model[str(bs)] / model['1']:.2f}x", "")  # fmt: skip
    table.add_row("embed, full path (max batch 32)", f"{path['worker_per_s']:,.0f}/s",
                  f"model b32: {model['32']:,.0f}/s", f"{worker_ratio:.3f}", f"≥ {TARGET_WORKER_RATIO}")  # fmt: skip
    table.add_row("feedback tokens/s, batch 8", f"{tps['8']:,.1f}", f"batch 1: {tps['1']:,.1f}", f"{fb_ratio:.2f}x",
                  f"≥ {TARGET_FEEDBACK_RATIO}x")  # fmt: skip
    use = fb["useful"]
    table.add_row("  same, 8 different answers", f"{use['8']:,.1f}", f"batch 1: {use['1']:,.1f}",
                  f"{use['8'] / use['1']:.2f}x", "")  # fmt: skip
    Console().print(table)
    console.print(f"mean formed batch {path['mean_batch']:.1f}; worker busy {path['busy_fraction']:.0%} of the time")
    console.print(f"wrote {args.out}")
    return 0 if result["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "texts"]
