"""The worker's model runners with the real models: MiniLM (embed, classify, grade) and SmolLM2 (feedback).

Models load once per module (the encoder is shared process-wide by the runners themselves); the
classify heads are trained once into a temporary models directory. The classify comparison uses the
real edge models built by the session fixture `built_models_dir`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from broker.errors import ConfigError
from gpu_worker.runners.base import InvalidInput, ModelRunner, UnknownTask
from gpu_worker.runners.classify import ClassifyRunner, EmbeddingClassifyRunner, read_split
from gpu_worker.runners.device import choose_device
from gpu_worker.runners.feedback import FeedbackRunner
from gpu_worker.runners.grade import GradeRunner
from gpu_worker.runners.minilm import DIM, EmbedRunner, decode_f16, default_model_path
from gpu_worker.runners.registry import DEFAULT_RUNNERS, build_runners, parse_names

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-models")


@pytest.fixture(scope="module")
def runners(models_root: Path) -> dict[tuple[str, str], ModelRunner]:
    built = build_runners(["embed", "classify", "classify-embedding", "grade"], models_dir=models_root)
    for r in built.values():
        r.load()
    return built


@pytest.fixture(scope="module")
def embed(runners: dict[tuple[str, str], ModelRunner]) -> EmbedRunner:
    r = runners[("embed", "all-minilm-l6-v2")]
    assert isinstance(r, EmbedRunner)
    return r


@pytest.fixture(scope="module")
def classify(runners: dict[tuple[str, str], ModelRunner]) -> ClassifyRunner:
    r = runners[("classify", "question-clf")]
    assert isinstance(r, ClassifyRunner)
    return r


@pytest.fixture(scope="module")
def grade(runners: dict[tuple[str, str], ModelRunner]) -> GradeRunner:
    r = runners[("grade", "rubric-minilm")]
    assert isinstance(r, GradeRunner)
    return r


# ---------------------------------------------------------------- device, registry


def test_device_choice_on_this_machine_is_reported() -> None:
    c = choose_device()
    if torch.cuda.is_available():
        assert c.device_name.startswith("cuda") and c.dtype_name in ("bfloat16", "float16")
    else:
        assert (c.device_name, c.dtype_name) == ("cpu", "float32")
        assert torch.get_num_threads() >= 1
    assert choose_device("cpu", "float32").dtype == torch.float32
    with pytest.raises(ConfigError, match="unknown dtype"):
        choose_device("cpu", "float8")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            choose_device("cuda")


def test_registry_names_and_unknown_runner() -> None:
    assert parse_names(["embed", "grade/rubric-minilm", ("feedback", "smollm2-135m-instruct")]) == [
        ("embed", "all-minilm-l6-v2"),
        ("grade", "rubric-minilm"),
        ("feedback", "smollm2-135m-instruct"),
    ]
    assert set(build_runners()) == set(DEFAULT_RUNNERS)
    with pytest.raises(UnknownTask, match="translate"):
        build_runners(["translate"])
    with pytest.raises(UnknownTask, match="embed/bert-large"):
        parse_names(["embed/bert-large"])


def test_runner_info_reports_device_and_dtype(runners: dict[tuple[str, str], ModelRunner]) -> None:
    for (task, model), r in runners.items():
        info = r.info()
        assert (info.task, info.model) == (task, model)
        assert info.device == choose_device().device_name
        assert info.dtype == choose_device().dtype_name


def test_signed_minilm_is_verified_and_a_tampered_copy_refused(built_models: Any, tmp_path: Path) -> None:
    from broker.registry import META_FILE, ModelRegistry, ModelVerificationError, load_signing_key

    src = tmp_path / "src"
    shutil.copytree(default_model_path(), src, ignore=shutil.ignore_patterns("README.md", ".gitattributes"))
    (src / META_FILE).write_text(json.dumps({"runtime": "transformers"}))
    root = tmp_path / "models"
    ModelRegistry(root).install("all-minilm-l6-v2", "1.0.0", src, load_signing_key(built_models.signing_key))

    ok = build_runners(["embed"], models_dir=root, verify_key=built_models.verify_key)[("embed", "all-minilm-l6-v2")]
    ok.load()
    assert ok.run_batch([{"text": "verified"}])[0]["dim"] == DIM
    verifier = ok._verifier  # type: ignore[attr-defined]
    assert verifier.status["all-minilm-l6-v2"].startswith("verified all-minilm-l6-v2 1.0.0")

    installed = ModelRegistry(root).model_dir("all-minilm-l6-v2", "1.0.0")
    with (installed / "vocab.txt").open("a") as f:
        f.write("tampered\n")
    bad = build_runners(["embed"], models_dir=root, verify_key=built_models.verify_key)[("embed", "all-minilm-l6-v2")]
    with pytest.raises(ModelVerificationError):
        bad.load()


# ---------------------------------------------------------------- embed


def _reference_embedding(texts: list[str]) -> np.ndarray:
    """Straight from transformers, one text at a time: mean pooling over tokens, L2 normalisation."""
    from transformers import AutoModel, AutoTokenizer

    path = str(default_model_path())
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    out = []
    with torch.no_grad():
        for t in texts:
            enc = tok(t, return_tensors="pt")
            hidden = model(**enc).last_hidden_state[0]
            v = hidden.mean(dim=0)
            out.append((v / v.norm()).numpy())
    return np.stack(out)


def test_embed_matches_a_manual_reference_and_is_normalised(embed: EmbedRunner) -> None:
    texts = ["What is photosynthesis?", "পরীক্ষার রুটিন কবে দেবে?", "a " * 40 + "much longer sentence about exams"]
    out = embed.run_batch([{"text": t} for t in texts])
    got = np.array([o["embedding"] for o in out], dtype=np.float32)
    assert got.shape == (3, DIM)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    ref = _reference_embedding(texts)
    assert np.min(np.sum(got * ref, axis=1)) > 0.99999
    assert [o["tokens"] for o in out] == embed._enc().count_tokens(texts)


def test_embed_mixed_lengths_in_a_batch_equal_the_singles(embed: EmbedRunner) -> None:
    texts = ["hi", "Explain Newton's third law with an example from daily life, please.", "কেমন আছ?"]
    batch = embed.run_batch([{"text": t} for t in texts])
    for t, b in zip(texts, batch, strict=True):
        single = embed.run_batch([{"text": t}])[0]
        assert np.allclose(b["embedding"], single["embedding"], atol=1e-5)


def test_embed_f16_encoding_is_compact_and_close(embed: EmbedRunner) -> None:
    full, half = embed.run_batch([{"text": "water cycle"}, {"text": "water cycle", "encoding": "f16"}])
    raw = half["embedding_f16"]
    assert isinstance(raw, bytes) and len(raw) == 2 * DIM and "embedding" not in half
    assert np.max(np.abs(decode_f16(raw) - np.array(full["embedding"]))) < 1e-3


def test_embed_context_limit_and_truncate(embed: EmbedRunner) -> None:
    long = "word " * 300
    with pytest.raises(InvalidInput, match="over the model's context of 256"):
        embed.check({"text": long})
    out = embed.run_batch([{"text": long, "truncate": True}])[0]
    assert out["truncated"] is True and out["tokens"] == 256


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "missing field 'text'"),
        ({"text": 3}, "must be a string"),
        ({"text": "   "}, "is empty"),
        ({"text": "x", "colour": "red"}, "unknown field"),
        ({"text": "x", "truncate": "yes"}, "true or false"),
        ({"text": "x", "encoding": "f64"}, "must be one of"),
    ],
)
def test_embed_bad_inputs(embed: EmbedRunner, inputs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        embed.check(inputs)


# ---------------------------------------------------------------- classify


def test_classify_beats_the_edge_classifier_in_both_languages(classify: ClassifyRunner, built_models_dir: Path) -> None:
    from edge_agent.models import EdgeModels

    test = read_split(REPO / "data" / "questions" / "test.jsonl")
    ours = [o["label"] for o in classify.run_batch([{"text": t} for t in test.texts])]
    edge = [label for label, _ in EdgeModels.load(built_models_dir).classify(list(test.texts))]
    for lang in ("en", "bn"):
        idx = [i for i, lg in enumerate(test.langs) if lg == lang]
        acc_ours = sum(ours[i] == test.labels[i] for i in idx) / len(idx)
        acc_edge = sum(edge[i] == test.labels[i] for i in idx) / len(idx)
        assert acc_ours > acc_edge, f"{lang}: cloud {acc_ours:.3f} vs edge {acc_edge:.3f}"
    # The metrics recorded at training time are the ones measured here.
    assert classify.models is not None
    recorded = classify.models.metrics["classify"]
    for lang in ("en", "bn"):
        idx = [i for i, lg in enumerate(test.langs) if lg == lang]
        assert recorded[lang] == pytest.approx(sum(ours[i] == test.labels[i] for i in idx) / len(idx))


def test_classify_output_shape_and_cached_heads_give_the_same_answers(classify: ClassifyRunner) -> None:
    from gpu_worker.runners import classify as clf

    inputs = [{"text": "When is the SSC exam?"}, {"text": "আমার পাসওয়ার্ড ভুলে গেছি"}, {"text": "kemon acho?"}]
    first = classify.run_batch(inputs)
    for row in first:
        assert row["label"] in row["scores"]
        assert row["confidence"] == max(row["scores"].values())
        assert sum(row["scores"].values()) == pytest.approx(1.0, abs=1e-4)
    assert [r["label"] for r in first[:2]] == ["exam_logistics", "account_admin"]

    cache = Path(classify.models.metrics["cache"])  # type: ignore[union-attr]
    assert cache.exists()
    clf._models.clear()  # the next runner must read the cache, not train again
    again = ClassifyRunner(cache_dir=cache.parent.parent)
    again.load()
    assert again.models is not None and again.models is not classify.models
    assert again.run_batch(inputs) == first

    # Without the dataset (an installed worker), the cached heads are used; with neither, a clear error.
    clf._models.clear()
    installed = ClassifyRunner(cache_dir=cache.parent.parent, data_dir=cache.parent / "no-data")
    installed.load()
    assert installed.run_batch(inputs) == first
    with pytest.raises(ConfigError, match="set HYB_QUESTIONS_DIR"):
        ClassifyRunner(cache_dir=cache.parent / "empty", data_dir=cache.parent / "no-data").load()


def test_classify_embedding_head_takes_float_int8_and_f16(
    runners: dict[tuple[str, str], ModelRunner], embed: EmbedRunner
) -> None:
    head = runners[("classify-embedding", "question-head")]
    assert isinstance(head, EmbeddingClassifyRunner)
    vec = np.array(embed.run_batch([{"text": "When will the exam results be published?"}])[0]["embedding"])
    scale = 127 / np.max(np.abs(vec))
    i8 = np.round(vec * scale).astype(np.int8)
    outs = head.run_batch(
        [
            {"embedding": vec.tolist()},
            {"embedding": i8.astype(int).tolist()},
            {"embedding_i8": i8.tobytes()},
            {"embedding_f16": vec.astype("<f2").tobytes()},
        ]
    )
    assert {o["label"] for o in outs} == {"exam_logistics"}
    assert outs[1]["confidence"] == pytest.approx(outs[0]["confidence"], abs=0.02)
    assert head.models is not None
    assert head.models.metrics["classify_embedding"]["en"] >= 0.75


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"embedding": [0.1] * 10}, "must have 384 values"),
        ({"embedding": [0.0] * 384}, "all zeros"),
        ({"embedding": ["a"] * 384}, "numbers only"),
        ({"embedding": [float("nan")] * 384}, "not finite"),
        ({"embedding_i8": b"\x01" * 10}, "384 bytes"),
        ({}, "exactly one of"),
        ({"embedding": [0.1] * 384, "embedding_i8": b"\x01" * 384}, "exactly one of"),
    ],
)
def test_classify_embedding_bad_inputs(
    runners: dict[tuple[str, str], ModelRunner], inputs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        runners[("classify-embedding", "question-head")].check(inputs)


def test_classify_serves_the_edge_embedding_payload_next_to_text(classify: ClassifyRunner, embed: EmbedRunner) -> None:
    """The edge agent's embedding-only offload is `{"embedding_f16": bytes, "dim": 384}` on `classify`."""
    vec = np.array(embed.run_batch([{"text": "When is the admit card download?"}])[0]["embedding"], dtype=np.float32)
    text_row, emb_row = classify.run_batch(
        [{"text": "When is the SSC exam?"}, {"embedding_f16": vec.astype("<f2").tobytes(), "dim": 384}]
    )
    assert (text_row["input"], emb_row["input"]) == ("text", "embedding")
    assert text_row["label"] == emb_row["label"] == "exam_logistics"
    with pytest.raises(InvalidInput, match="'dim' must be 384"):
        classify.check({"embedding": vec.tolist(), "dim": 768})
    with pytest.raises(InvalidInput, match="text or an embedding, not both"):
        classify.check({"text": "hi", "embedding": vec.tolist()})


def test_classify_bad_inputs(classify: ClassifyRunner) -> None:
    with pytest.raises(InvalidInput, match="context of 256"):
        classify.check({"text": "word " * 300})
    assert classify.run_batch([{"text": "word " * 300 + "exam date", "truncate": True}])[0]["label"]
    with pytest.raises(InvalidInput, match="missing field 'text'"):
        classify.check({})


# ---------------------------------------------------------------- grade


def test_grade_agreement_on_the_held_out_answers(grade: GradeRunner) -> None:
    m = grade.metrics
    assert m["test_n"] >= 30 and m["train_n"] >= 60
    for lang in ("en", "bn"):
        assert m[lang]["n"] >= 15
        assert m[lang]["mae"] <= 0.8, m[lang]
        assert m[lang]["pearson"] >= 0.85, m[lang]
        assert m[lang]["spearman"] >= 0.8, m[lang]
        assert m[lang]["within_1"] >= 0.85, m[lang]


def test_grade_outputs_and_ordering(grade: GradeRunner) -> None:
    good, weak, wrong, bn_good, bn_weak = grade.run_batch(
        [
            {
                "question_id": "en-water-cycle",
                "answer": "Water evaporates, condenses into clouds, falls as rain "
                "and collects in rivers and seas before evaporating again.",
            },
            {"question_id": "en-water-cycle", "answer": "Water goes around."},
            {"question_id": "en-water-cycle", "answer": "The capital of Bangladesh is Dhaka."},
            {"question_id": "bn-heart", "answer": "হৃৎপিণ্ড পাম্পের মতো সারা দেহে রক্ত সঞ্চালন করে; এর চারটি প্রকোষ্ঠ আছে।"},
            {"question_id": "bn-heart", "answer": "এটা শরীরে থাকে।"},
        ]
    )
    assert good["max_score"] == 5 and 0 <= wrong["score"] <= weak["score"] < good["score"] <= 5
    assert set(good["coverage"]) == {"evaporation", "condensation", "precipitation", "collection"}
    assert all(good["coverage"].values()) and good["coverage_ratio"] == 1.0
    assert bn_good["score"] > bn_weak["score"] + 1.5
    assert bn_good["coverage"]["pump"] and bn_good["coverage"]["chambers"]


def test_grade_inline_references_and_key_points(grade: GradeRunner) -> None:
    out = grade.run_batch(
        [
            {
                "answer": "Dhaka is the capital of Bangladesh.",
                "references": ["The capital of Bangladesh is Dhaka."],
                "key_points": ["Dhaka"],
                "max_score": 10,
            },
            {"answer": "I like mangoes.", "references": ["The capital of Bangladesh is Dhaka."], "max_score": 10},
        ]
    )
    assert out[0]["max_score"] == 10 and out[0]["score"] > out[1]["score"]
    assert out[0]["coverage"] == {"k1": True}


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"question_id": "nope", "answer": "x"}, "unknown question_id 'nope'"),
        ({"answer": "x"}, "send question_id, or references"),
        ({"question_id": "en-plassey"}, "missing field 'answer'"),
        ({"question_id": "en-plassey", "answer": "x", "references": ["y"]}, "not both"),
        ({"answer": "x", "references": ["y"], "max_score": -1}, "max_score"),
        ({"question_id": "en-plassey", "answer": "word " * 300}, "context of 256"),
    ],
)
def test_grade_bad_inputs(grade: GradeRunner, inputs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        grade.check(inputs)


# ---------------------------------------------------------------- feedback


@pytest.fixture(scope="module")
def feedback() -> FeedbackRunner:
    r = FeedbackRunner()
    r.load()
    return r


def test_feedback_left_padding_gives_the_same_output_alone_and_in_a_batch(feedback: FeedbackRunner) -> None:
    short = {"answer": "Plants make food.", "max_new_tokens": 8}
    long = {
        "question": "What is photosynthesis?",
        "answer": "Photosynthesis is how green plants use sunlight, water and carbon dioxide to make glucose "
        "and release oxygen through their leaves.",
        "max_new_tokens": 6,
    }
    alone = feedback.run_batch([short])[0]
    together = feedback.run_batch([short, long])
    assert together[0] == alone
    assert 0 < alone["tokens"] <= 8 and alone["feedback"]
    assert 0 < together[1]["tokens"] <= 6
    assert feedback._tokenizer.padding_side == "left"


def test_feedback_takes_a_question_id_of_the_grading_bank(feedback: FeedbackRunner) -> None:
    """`hybrid grade run` sends {"question_id", "answer"} to both grade and feedback."""
    prompt = feedback.prompt({"answer": "It rains.", "question": "Describe the water cycle."})
    assert "Question: Describe the water cycle." in prompt and "Student answer: It rains." in prompt
    out = feedback.run_batch([{"question_id": "en-water-cycle", "answer": "It rains.", "max_new_tokens": 4}])[0]
    assert 0 < out["tokens"] <= 4
    with pytest.raises(InvalidInput, match="unknown question_id 'nope'"):
        feedback.check({"question_id": "nope", "answer": "x"})


def test_feedback_bad_inputs(feedback: FeedbackRunner) -> None:
    with pytest.raises(InvalidInput, match="max_new_tokens"):
        feedback.check({"answer": "x", "max_new_tokens": 0})
    with pytest.raises(InvalidInput, match="missing field 'answer'"):
        feedback.check({"question": "x"})
    with pytest.raises(InvalidInput, match="over the limit of 1024"):
        feedback.check({"answer": "word " * 1200})
    with pytest.raises(InvalidInput, match="'score' must be a number"):
        feedback.check({"answer": "x", "score": "high"})


# ---------------------------------------------------------------- through the worker


def test_model_runners_through_the_worker_on_real_redis(
    r: Any, sealer: Any, zone: str, embed: EmbedRunner, classify: ClassifyRunner, grade: GradeRunner
) -> None:
    """Sealed jobs → Worker (batcher, check, run_batch) → sealed results: outputs survive the codec."""
    from broker.client import Client
    from broker.consumer import Consumer
    from gpu_worker.worker import Worker

    client = Client(r, sealer, zone)
    vec = np.array(embed.run_batch([{"text": "exam routine"}])[0]["embedding"], dtype=np.float32)
    mini, clf, rub = "all-minilm-l6-v2", "question-clf", "rubric-minilm"
    f16 = vec.astype("<f2").tobytes()
    jobs = {
        "embed": client.submit("embed", {"text": "Why is the sky blue?"}, model=mini),
        "embed_f16": client.submit("embed", {"text": "Why is the sky blue?", "encoding": "f16"}, model=mini),
        "bn": client.submit("classify", {"text": "পরীক্ষার রুটিন কবে দেবে?"}, model=clf),
        "emb": client.submit("classify", {"embedding_f16": f16, "dim": 384}, model=clf),
        "grade": client.submit("grade", {"question_id": "en-fractions", "answer": "LCM: 3/6 + 2/6 = 5/6."}, model=rub),
        "too_long": client.submit("embed", {"text": "word " * 400}, model=mini),
        "bad_q": client.submit("grade", {"question_id": "nope", "answer": "x"}, model=rub),
    }
    consumer = Consumer(r, sealer, zone, "w-models", count=32, block_ms=50, min_idle_ms=60_000)
    Worker(consumer, [embed, classify, grade]).run(burst=True)
    res = client.wait_all(list(jobs.values()), timeout=30)
    out = {k: res[j] for k, j in jobs.items()}
    assert all(out[k].status == "ok" for k in ("embed", "embed_f16", "bn", "emb", "grade")), out
    assert len(out["embed"].output["embedding"]) == DIM
    assert (
        np.max(np.abs(decode_f16(out["embed_f16"].output["embedding_f16"]) - out["embed"].output["embedding"])) < 1e-3
    )
    assert out["bn"].output["label"] == "exam_logistics"
    assert out["emb"].output["input"] == "embedding"
    assert out["grade"].output["score"] >= 3
    assert out["too_long"].status != "ok" and "over the model's context" in (out["too_long"].error or "")
    assert out["bad_q"].status != "ok" and "unknown question_id" in (out["bad_q"].error or "")
