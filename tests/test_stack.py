"""`hybrid up`, `hybrid demo`, `hybrid pilot`, `hybrid dataflow`: end to end on real processes.

The stack's data dir is the session's built-models dir (`tests.edge_fixtures.built_models`: models/
and keys/ are exactly the layout `hybrid up` uses), so the models are built once per session.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from hybrid.stack.costmodel import CloudJob, CostModel
from hybrid.stack.dataflow import render
from policies import load_default_policy, load_policy
from tests.edge_fixtures import BuiltModels

ROOT = Path(__file__).resolve().parents[1]
HYBRID = [sys.executable, "-m", "hybrid"]


@pytest.fixture(scope="session")
def stack_dir(built_models: BuiltModels) -> Path:
    return built_models.root.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for k in ("HYB_DATA_DIR", "HYB_CONFIG", "REDIS_URL", "HYB_REDIS_URL"):
        env.pop(k, None)
    return env


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HYBRID, *args], capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT)


# -- demo and pilot ----------------------------------------------------------------------------------


def test_demo_quick_runs_end_to_end_and_its_json_checks_out(stack_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    proc = _run(["demo", "--quick", "--data-dir", str(stack_dir), "--json", str(out)], timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    d = json.loads(out.read_text())
    assert d["answered"] == d["requests"] > 60, d["unanswered"]
    assert all(d["routes"][r] > 0 for r in ("local", "cloud", "fallback", "cascade")), d["routes"]
    assert d["pii_values_left_devices"] == 0
    assert d["pii_redis_scan_hits"] == 0 and d["pii_values_in_trace"] > 10
    assert d["pii_values_tokenized"] > 0  # PII was there and was tokenized, not just absent
    assert d["dlq_new"] == 0
    assert d["essays_graded"] == d["essays"] > 0 and d["essay_sample"]["feedback"]
    # essays went through the grading driver to the real grade + feedback runners (no stand-in)
    assert d["essay_sample"]["question_id"] and 0 <= d["essay_sample"]["score"] <= d["essay_sample"]["max_score"]
    assert {"grade", "feedback"} <= set(d["batch_sizes"]), d["batch_sizes"]
    assert sum(z["ok"] for z in d["essay_grading"]["by_zone"].values()) == d["essays"]
    assert d["batch_sizes"]["question-classification"]["batches"] > 0
    assert d["bytes_left_devices"] > 0 and d["cost_usd"]["total_usd"] > 0
    assert d["where_to_look"]["status_page"].startswith("http://127.0.0.1:")
    assert d["passed"] is True and all(d["checks"].values())
    assert "demo passed" in proc.stdout


def test_demo_broker_only_still_runs_the_sealed_round_trip() -> None:
    proc = _run(["demo", "--broker-only", "--jobs", "40"], timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "demo passed" in proc.stdout and "40 results" in proc.stdout + proc.stderr


def test_cloud_worker_grades_essays_with_the_real_grade_runner_and_refuses_edge_jobs_without_question_id(
    tmp_path: Path,
) -> None:
    from gpu_worker.runners.base import InvalidInput
    from gpu_worker.runners.feedback import FeedbackRunner
    from gpu_worker.runners.grade import GradeRunner
    from hybrid.stack.cloud_worker import EssayGradingRunner, cloud_runners

    runners = cloud_runners(tmp_path / "models", None, tmp_path / "heads", "light", feedback_tokens=16)
    kinds = {(r.task, r.model): r for r in runners}
    assert isinstance(kinds[("grade", "rubric-minilm")], GradeRunner)
    fb = kinds[("feedback", "smollm2-135m-instruct")]
    assert isinstance(fb, FeedbackRunner) and fb.default_max_new_tokens == 16
    essay = kinds[("essay-grading", "essay-grader-large")]
    assert isinstance(essay, EssayGradingRunner) and essay.aliases == (("essay-grading", "*"),)
    essay.load()
    with pytest.raises(InvalidInput, match=r"no question_id.*hybrid grade run"):
        essay.check({"text": "Plants make food from sunlight."})  # what an edge sends
    good = "Plants use sunlight to turn water and carbon dioxide into glucose and oxygen."
    job = {"question_id": "en-photosynthesis", "text": good}
    essay.check(job)
    out = essay.run_batch([job, {"question_id": "en-photosynthesis", "text": "I like football."}])
    assert out[0]["model"] == "grade/rubric-minilm" and out[0]["max_score"] == 5.0
    assert out[0]["score"] > out[1]["score"]  # the fitted grader, not a length rubric


PILOT_KEYS = (
    "cost_saving",
    "accuracy_hybrid",
    "accuracy_cloud",
    "accuracy_edge_only",
    "interactive_p50_ms_hybrid",
    "interactive_p50_ms_cloud",
    "pii_values_leaked",
    "offload_rate_hybrid",
    "cloud_gpu_seconds_hybrid",
    "cloud_gpu_seconds_cloud",
    "price_table",
    "targets",
)


def test_pilot_quick_writes_json_with_every_key_report_and_plots(stack_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "pilot.json"
    plots = tmp_path / "plots"
    proc = _run(
        ["pilot", "--quick", "--data-dir", str(stack_dir), "--json", str(out), "--plots", str(plots)], timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    d = json.loads(out.read_text())
    missing = [k for k in PILOT_KEYS if k not in d]
    assert not missing
    assert d["pii_values_leaked"] == 0
    h, c = d["arms"]["hybrid"], d["arms"]["always-cloud"]
    assert h["answered"] == h["requests"] and c["answered"] == c["requests"]
    assert d["offload_rate_cloud"] == 1.0 and d["offload_rate_hybrid"] < 1.0
    assert 0.0 < d["accuracy_hybrid"] <= 1.0 and 0.0 < d["accuracy_cloud"] <= 1.0
    assert all(row["source"] for row in d["price_table"] if "derived" not in row["item"])
    for name in ("latency_cdf.png", "cost_per_hour.png", "offload_rate.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = out.with_suffix(".md").read_text()
    assert "hybrid vs always-cloud" in report and "Price table" in report


# -- `hybrid up`: Ctrl-C leaves nothing behind -------------------------------------------------------


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return out


def _start_up(stack_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    args = [
        "up",
        "--data-dir",
        str(stack_dir),
        "--edges",
        "1",
        "--edge-port",
        "0",
        "--api-port",
        "0",
        "--status-port",
        "0",
        "--cloud-models",
        "light",
    ]
    fh = log.open("wb")
    return subprocess.Popen(
        [*HYBRID, *args], stdout=fh, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT, start_new_session=True
    )


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, (
            f"no {text!r} within {timeout} s: " + log.read_text(errors="replace")[-3000:]
        )
        time.sleep(0.1)


def _interrupt_and_check(proc: subprocess.Popen[bytes], log: Path) -> None:
    children = _descendants(proc.pid)
    assert children, "hybrid up started no processes"
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=90) == 0, log.read_text(errors="replace")[-3000:]
    deadline = time.monotonic() + 10
    while _alive(children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _alive(children) == [], "orphans left behind"
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "stopped." in text


def test_up_prints_urls_and_ctrl_c_stops_every_child(stack_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    proc = _start_up(stack_dir, log)
    try:
        _wait_for(log, "hybrid stack is up", proc, timeout=240)
        text = log.read_text()
        assert "/v1/requests" in text and "status page" in text
        kinds = " ".join(" ".join(p.cmdline()) for p in _descendants(proc.pid))
        for part in ("redis-server", "hybrid.stack.cloud_worker", "hybrid.stack.edge_main", "exporter", "api"):
            assert part in kinds, kinds
        _interrupt_and_check(proc, log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_ctrl_c_during_start_leaves_no_orphans(stack_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    proc = _start_up(stack_dir, log)
    try:
        _wait_for(log, "worker pool for zone", proc, timeout=120)  # workers are loading, edges not yet up
        _interrupt_and_check(proc, log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


# -- bad input: one line, non-zero, no traceback ----------------------------------------------------


def _fails_cleanly(proc: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr


def test_port_in_use_is_refused(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = _run(
            [
                "up",
                "--data-dir",
                str(tmp_path / "d"),
                "--api-port",
                str(port),
                "--edge-port",
                "0",
                "--status-port",
                "0",
            ],
            timeout=60,
        )
    _fails_cleanly(proc, 2, f"port {port}")
    assert "in use" in proc.stderr
    assert not (tmp_path / "d" / "redis").exists()  # refused before anything started


def test_unwritable_data_dir_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = _run(
        ["up", "--data-dir", str(blocker / "data"), "--edge-port", "0", "--api-port", "0", "--status-port", "0"],
        timeout=60,
    )
    _fails_cleanly(proc, 2, "not writable")


def test_redis_url_that_does_not_answer_is_refused(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _run(
        [
            "up",
            "--data-dir",
            str(tmp_path / "d"),
            "--redis-url",
            f"redis://127.0.0.1:{port}/0",
            "--edge-port",
            "0",
            "--api-port",
            "0",
            "--status-port",
            "0",
        ],
        timeout=60,
    )
    _fails_cleanly(proc, 69, "does not answer")


def test_corrupted_models_dir_is_refused(stack_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "d"
    shutil.copytree(stack_dir / "models", data / "models")
    shutil.copytree(stack_dir / "keys", data / "keys")
    weights = next((data / "models" / "qclf-edge").glob("*/weights.npz"))
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    weights.write_bytes(bytes(blob))
    proc = _run(
        ["up", "--data-dir", str(data), "--edge-port", "0", "--api-port", "0", "--status-port", "0"], timeout=120
    )
    _fails_cleanly(proc, 2, "corrupted")
    assert str(data / "models") in proc.stderr


# -- dataflow documents and policies --------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["en", "bn"])
def test_shipped_dataflow_docs_are_up_to_date(lang: str) -> None:
    shipped = (ROOT / "docs" / f"dataflow.{lang}.md").read_text(encoding="utf-8")
    assert shipped == render(load_default_policy(), lang), f"regenerate: hybrid dataflow --lang {lang} --out ..."


def test_dataflow_follows_the_policy_and_writes_a_file(tmp_path: Path) -> None:
    out = tmp_path / "flow.md"
    proc = _run(
        ["dataflow", "--lang", "bn", "--policy", str(ROOT / "policies" / "always-cloud.yaml"), "--out", str(out)],
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    text = out.read_text(encoding="utf-8")
    assert "তথ্যপ্রবাহ" in text and "always-cloud.yaml" in text
    assert "সবসময় ক্লাউড মডেল `qclf-xlmr-large`" in text  # no edge model in this policy
    en = render(load_default_policy(), "en")
    assert "answered on the device by `qclf-bn-distil`" in en and "in-wb" in en and "bd-dhaka" in en
    bad = _run(["dataflow", "--lang", "fr"], timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_always_cloud_policy_differs_from_default_only_by_edge_models() -> None:
    default = load_default_policy()
    cloud = load_policy(ROOT / "policies" / "always-cloud.yaml")
    assert all(t.edge_model is None for t in cloud.tasks.values())
    strip = {n: t.model_copy(update={"edge_model": None}) for n, t in default.tasks.items()}
    assert cloud.model_copy(update={"tasks": {}}) == default.model_copy(update={"tasks": {}})
    assert cloud.tasks == strip


def test_default_price_table_cites_a_source_for_every_price() -> None:
    p = load_default_policy()
    for zone, price in p.cost.cloud.items():
        for field in ("on_demand_usd_per_hour", "spot_usd_per_hour", "egress_usd_per_gb"):
            assert price.sources.get(field), f"{zone}.{field} has no source"
        assert price.instance
    for field in ("hardware_usd", "power_watts", "electricity_usd_per_kwh"):
        assert p.cost.edge.sources.get(field)


def test_cost_model_bills_warm_instances_only_where_users_wait() -> None:
    cm = CostModel(load_default_policy())
    od = cm.policy.cost.cloud["in-wb"].on_demand_usd_per_hour
    hour = 3600.0
    sync = [CloudJob("in-wb", "interactive", "qclf-xlmr-large", True)] * 100
    cascades = [CloudJob("in-wb", "interactive", "qclf-xlmr-large", False)] * 100
    waiting = cm.arm_cost(sync, wall_s=hour, egress_bytes={}, edge_devices=0)
    refined = cm.arm_cost(cascades, wall_s=hour, egress_bytes={}, edge_devices=0)
    assert waiting["zones"]["in-wb"]["warm_instances"] == 1.0
    assert waiting["cloud_gpu_usd"] == pytest.approx(od)  # one warm GPU for the hour
    assert refined["zones"]["in-wb"]["warm_instances"] == 0.0
    busy = 100 * cm.gpu_s("qclf-xlmr-large")
    assert refined["cloud_gpu_usd"] == pytest.approx(busy / 0.35 / 3600 * od)
    edge = cm.arm_cost([], wall_s=hour, egress_bytes={"in-wb": 1e9}, edge_devices=10)
    assert edge["edge_usd"] > 0 and edge["egress_usd"] == pytest.approx(cm.policy.cost.cloud["in-wb"].egress_usd_per_gb)
