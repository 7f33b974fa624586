"""The extractive summarizer that answers the policy's `summarization` task, alone and through a worker."""

from __future__ import annotations

import pytest
import redis

from broker.client import Client
from broker.consumer import Consumer
from broker.message import Sealer
from gpu_worker.runners.base import InvalidInput
from gpu_worker.runners.summarize import SummarizeRunner, split_sentences, summarize
from gpu_worker.worker import Worker

EN = (
    "Photosynthesis is how green plants make food from light. Plants take in carbon dioxide from the air. "
    "Water comes up from the roots. In the leaves, chlorophyll captures light energy. "
    "Light energy turns carbon dioxide and water into glucose. Oxygen is released as a by-product of "
    "photosynthesis. My cousin likes football."
)
BN = (
    "সালোকসংশ্লেষণ হলো সবুজ উদ্ভিদের খাদ্য তৈরির প্রক্রিয়া। উদ্ভিদ বাতাস থেকে কার্বন ডাই অক্সাইড গ্রহণ করে। "
    "মূল দিয়ে পানি ওপরে ওঠে। পাতার ক্লোরোফিল আলো শোষণ করে। আলোর শক্তিতে কার্বন ডাই অক্সাইড ও পানি থেকে "
    "গ্লুকোজ তৈরি হয়। সালোকসংশ্লেষণে অক্সিজেন বের হয়। আমার ভাই ক্রিকেট খেলে।"
)


@pytest.mark.parametrize(("text", "off_topic"), [(EN, "My cousin likes football."), (BN, "আমার ভাই ক্রিকেট খেলে।")])
def test_summary_is_the_texts_own_central_sentences_in_order(text: str, off_topic: str) -> None:
    sentences = split_sentences(text)
    assert len(sentences) == 7 and sentences[-1] == off_topic
    out = summarize(text, 3)
    assert out["of"] == 7 and len(out["sentences"]) == 3 and out["sentences"] == sorted(out["sentences"])
    assert out["summary"] == " ".join(sentences[i] for i in out["sentences"])
    assert 6 not in out["sentences"]  # the sentence about something else is never picked
    assert 0.0 < out["coverage"] <= 1.0


def test_a_repeated_sentence_is_not_picked_twice() -> None:
    core = "Rivers of the Bengal delta carry silt from the Himalaya to the sea."
    text = " ".join([core, "The delta is the largest in the world.", core, "Silt makes the delta fertile for rice.",
                     "Floods of the monsoon spread the silt over the fields.", "I had tea."])  # fmt: skip
    chosen = [split_sentences(text)[i] for i in summarize(text, 2)["sentences"]]
    assert chosen.count(core) <= 1 and len(chosen) == 2


def test_a_short_text_comes_back_whole() -> None:
    out = summarize("নদী বয়ে যায়। Water flows.", 3)
    assert out == {"summary": "নদী বয়ে যায়। Water flows.", "sentences": [0, 1], "of": 2, "coverage": 1.0}


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "missing field 'text'"),
        ({"text": "   "}, "is empty"),
        ({"text": "x", "max_sentences": 0}, "between 1 and 20"),
        ({"text": "x", "max_sentences": "3"}, "must be an integer"),
        ({"text": "x", "language": "bn"}, "unknown field"),
    ],
)
def test_bad_inputs_are_refused_with_the_field_named(inputs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        SummarizeRunner().check(inputs)


def test_the_policys_summarization_jobs_reach_it_through_a_worker(r: redis.Redis, sealer: Sealer, zone: str) -> None:
    client = Client(r, sealer, zone)
    ids = [
        client.submit("summarization", {"text": EN, "max_sentences": 2}, model="summarizer-large"),
        client.submit("summarization", {"text": BN}, model="summarizer-bn-small"),
    ]
    worker = Worker(Consumer(r, sealer, zone, "w1", block_ms=50), [SummarizeRunner()])
    worker.run(burst=True)
    results = client.wait_all(ids, timeout=10)
    en, bn = results[ids[0]], results[ids[1]]
    assert en.ok and bn.ok, (en.error, bn.error)
    assert en.output["summary"] == summarize(EN, 2)["summary"] and len(en.output["sentences"]) == 2
    assert bn.output["summary"] == summarize(BN, 3)["summary"] and "আমার ভাই" not in bn.output["summary"]
