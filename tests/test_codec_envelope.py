"""Codec and envelope: round trips, limits, and that any change to a sealed message is caught."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.codec import Codec, pack, pack_fast, train_dictionary
from broker.envelope import DataKeyCachePolicy, Envelope
from broker.errors import (
    DecodeError,
    MalformedMessage,
    MessageError,
    PayloadTooLarge,
    TamperedMessage,
    UnknownKey,
    ZoneMismatch,
)
from broker.keyring import LocalKeyring
from broker.message import BODY_FIELD, HEADER_FIELD, JobSpec, Sealer
from broker.schema import JobHeader, JobPayload

json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
payloads = st.dictionaries(st.text(max_size=20), json_like | st.binary(max_size=200), max_size=8)


@given(payloads)
def test_codec_round_trip(obj: dict[str, object]) -> None:
    codec = Codec()
    assert codec.decode(codec.encode(obj)) == obj


def test_codec_refuses_oversized_payload_before_sending() -> None:
    codec = Codec(max_payload_bytes=1000)
    with pytest.raises(PayloadTooLarge) as err:
        codec.encode({"text": "x" * 2000})
    assert err.value.limit == 1000 and err.value.size > 2000


def test_codec_refuses_frames_that_inflate_past_the_limit() -> None:
    big = Codec(max_payload_bytes=10 << 20).encode({"text": "a" * (5 << 20)})
    assert len(big) < 1 << 20  # compresses to little …
    with pytest.raises(DecodeError, match="over the limit"):
        Codec(max_payload_bytes=1 << 20).decode(big)  # … but must not be inflated by a small reader


@pytest.mark.parametrize("frame", [b"", b"not zstd at all", Codec().encode({"a": 1})[:-3]])
def test_codec_rejects_garbage(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        Codec().decode(frame)


def test_codec_rejects_a_non_map_payload() -> None:
    import zstandard

    with pytest.raises(DecodeError, match="not a map"):
        Codec().decode(zstandard.ZstdCompressor().compress(pack([1, 2, 3])))


def test_trained_dictionary_shrinks_small_payloads_and_is_required_to_read() -> None:
    samples = [
        {"question": f"What is the capital of country number {i}? Answer in Bengali.", "n": i} for i in range(400)
    ]
    zdict = train_dictionary(samples, size=4096)
    with_dict = Codec(dictionaries={"classify": zdict})
    sample = {"question": "What is the capital of country number 9999? Answer in Bengali.", "n": 9999}
    framed = with_dict.encode(sample, task="classify")
    assert len(framed) < len(Codec().encode(sample))
    assert with_dict.decode(framed) == sample
    with pytest.raises(DecodeError, match="dictionary"):
        Codec().decode(framed)


def _sealer(tmp_path: Path, zone: str = "z", policy: DataKeyCachePolicy | None = None) -> Sealer:
    path = tmp_path / "k.json"
    if not path.exists():
        LocalKeyring.init_zone(path, zone)
    return Sealer(Envelope(LocalKeyring(path), policy))


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(inputs=payloads)
def test_envelope_round_trip(tmp_path: Path, inputs: dict[str, object]) -> None:
    sealer = _sealer(tmp_path)
    header, hb, body = sealer.seal_job("z", JobSpec(task="t", inputs=inputs))
    job = sealer.open_job("z", {HEADER_FIELD: hb, BODY_FIELD: body})
    assert job.header == header
    assert job.payload.inputs == inputs


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_flipped_byte_is_rejected(tmp_path: Path, data: st.DataObject) -> None:
    sealer = _sealer(tmp_path)
    _, hb, body = sealer.seal_job("z", JobSpec(task="t", inputs={"text": "ami tomake bhalobashi"}))
    in_header = data.draw(st.booleans())
    target = hb if in_header else body
    pos = data.draw(st.integers(0, len(target) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(target)
    flipped[pos] ^= 1 << bit
    entry = (
        {HEADER_FIELD: bytes(flipped), BODY_FIELD: body}
        if in_header
        else {HEADER_FIELD: hb, BODY_FIELD: bytes(flipped)}
    )
    with pytest.raises(Exception) as err:
        sealer.open_job("z", entry)
    assert isinstance(err.value, MessageError), repr(err.value)


def test_body_under_another_header_does_not_open(tmp_path: Path) -> None:
    sealer = _sealer(tmp_path)
    _, hb1, _ = sealer.seal_job("z", JobSpec(task="t", inputs={"a": 1}))
    _, _, body2 = sealer.seal_job("z", JobSpec(task="t", inputs={"a": 2}))
    with pytest.raises(TamperedMessage):
        sealer.open_job("z", {HEADER_FIELD: hb1, BODY_FIELD: body2})


def test_truncated_body_is_malformed(tmp_path: Path) -> None:
    sealer = _sealer(tmp_path)
    _, hb, body = sealer.seal_job("z", JobSpec(task="t", inputs={"a": 1}))
    with pytest.raises(MalformedMessage, match="truncated"):
        sealer.open_job("z", {HEADER_FIELD: hb, BODY_FIELD: body[:20]})


def test_data_key_is_reused_within_its_message_bound(tmp_path: Path) -> None:
    sealer = _sealer(tmp_path, policy=DataKeyCachePolicy(max_messages=10))
    bodies = [sealer.seal_job("z", JobSpec(task="t", inputs={"i": i}))[2] for i in range(25)]
    wrapped = {b[2 : 2 + b[1]] for b in bodies}
    assert len(wrapped) == 3  # 10 + 10 + 5
    assert sealer.envelope.data_keys_created == 3
    nonces = {b[2 + b[1] : 14 + b[1]] for b in bodies}
    assert len(nonces) == 25


def test_data_key_expires_by_age(tmp_path: Path) -> None:
    sealer = _sealer(tmp_path, policy=DataKeyCachePolicy(max_age_s=0.05))
    sealer.seal_job("z", JobSpec(task="t", inputs={}))
    first = sealer.envelope.data_keys_created
    deadline = time.monotonic() + 0.06
    while time.monotonic() < deadline:  # let the bound pass (measured, not assumed)
        time.sleep(0.01)
    sealer.seal_job("z", JobSpec(task="t", inputs={}))
    assert sealer.envelope.data_keys_created == first + 1


def test_other_zone_keyring_cannot_open(tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    LocalKeyring.init_zone(a, "zone-a")
    LocalKeyring.init_zone(b, "zone-b")
    _, hb, body = Sealer(Envelope(LocalKeyring(a))).seal_job("zone-a", JobSpec(task="t", inputs={"x": 1}))
    reader = Sealer(Envelope(LocalKeyring(b)))
    with pytest.raises(UnknownKey):
        reader.envelope.open("zone-a/v1", hb, body)


def test_same_zone_name_different_kek_is_tampering(tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    LocalKeyring.init_zone(a, "z")
    LocalKeyring.init_zone(b, "z")  # same zone name, independent key
    _, hb, body = Sealer(Envelope(LocalKeyring(a))).seal_job("z", JobSpec(task="t", inputs={}))
    with pytest.raises(TamperedMessage):
        Sealer(Envelope(LocalKeyring(b))).open_job("z", {HEADER_FIELD: hb, BODY_FIELD: body})


def test_results_are_bound_to_their_job(tmp_path: Path) -> None:
    sealer = _sealer(tmp_path)
    h1, _, _ = sealer.seal_job("z", JobSpec(task="t", inputs={}))
    h2, _, _ = sealer.seal_job("z", JobSpec(task="t", inputs={}))
    stored = sealer.seal_result(h1, "w", 1, output={"label": "math"})
    assert sealer.open_result("z", h1.job_id, stored).output == {"label": "math"}
    with pytest.raises(ZoneMismatch):
        sealer.open_result("z", h2.job_id, stored)


def test_random_bytes_never_open(tmp_path: Path) -> None:
    sealer = _sealer(tmp_path)
    _, hb, _ = sealer.seal_job("z", JobSpec(task="t", inputs={}))
    for _ in range(50):
        with pytest.raises(MessageError):
            sealer.open_job("z", {HEADER_FIELD: hb, BODY_FIELD: b"\x01\x28" + os.urandom(100)})


@given(
    st.dictionaries(
        st.sampled_from(["inputs", "options", "extra"]),
        json_like | st.dictionaries(st.text(max_size=3) | st.binary(max_size=3), json_like, max_size=3),
        max_size=3,
    )
)
def test_payload_schema_accepts_exactly_the_documented_payloads(obj: dict[str, object]) -> None:
    """docs/envelope.md: a payload is a map with `inputs` (required) and `options` (optional), both
    maps with string keys, and nothing else. The msgspec schema must accept exactly that."""
    import msgspec

    def str_keyed_map(v: object) -> bool:
        return isinstance(v, dict) and all(type(k) is str for k in v)

    documented = (
        set(obj) <= {"inputs", "options"} and str_keyed_map(obj.get("inputs")) and str_keyed_map(obj.get("options", {}))
    )
    try:
        decoded = Codec().decode_as(pack(obj), msgspec.msgpack.Decoder(JobPayload))
    except DecodeError:
        assert not documented
    else:
        assert documented and decoded.inputs == obj["inputs"] and decoded.options == obj.get("options", {})


@given(payloads)
def test_fast_packer_writes_the_same_bytes_as_msgpack(obj: dict[str, object]) -> None:
    assert pack_fast(obj) == pack(obj)


HEADER = {
    "v": 1, "job_id": "01J0000000000000000000000A", "tenant": "school-1", "zone": "bd-dhaka", "task": "grade",
    "model": "m", "lane": "batch", "sensitivity": "personal", "kid": "bd-dhaka/v3", "created_ms": 1,
    "deadline_ms": None, "reply_to": None, "attempt": 1, "trace_id": None,
}  # fmt: skip
BAD_HEADER_VALUES = {
    "job_id": ["", "-starts-with-dash", "x" * 97, "has space", 7, "01J0000000000000000000000A\n"],
    "tenant": ["", "t" * 65, b"bytes"],
    "zone": ["Upper", "z" * 33, "", "bd-dhaka\n"],
    "task": ["", "t" * 65],
    "model": ["", "m" * 129],
    "lane": ["urgent"],
    "sensitivity": ["secret"],
    "kid": ["bd-dhaka", "bd-dhaka/vX", "x/v1234567890", "bd-dhaka/v3\n"],
    "created_ms": [-1, 2**53, 1.5, True],
    "deadline_ms": [-5, "soon"],
    "reply_to": ["", "a b", "replies\n"],
    "attempt": [0, 1001, True],
    "trace_id": ["t" * 65],
}


@pytest.mark.parametrize(("name", "value"), [(k, v) for k, vs in BAD_HEADER_VALUES.items() for v in vs])
def test_every_header_constraint_is_enforced(sealer: Sealer, name: str, value: object) -> None:
    assert sealer.open_header("bd-dhaka", pack(HEADER)).zone == "bd-dhaka"
    with pytest.raises(MalformedMessage, match=rf"\$\.{name}"):
        sealer.open_header("bd-dhaka", pack({**HEADER, name: value}))


def test_identifier_patterns_are_checked_for_a_whole_read(sealer: Sealer) -> None:
    """One regex call per field checks a good read; a bad value among good ones is still found, and
    only its header is refused — a newline inside a value included (the batch check joins by newlines)."""
    raws = [pack({**HEADER, "job_id": f"job-{i}", "reply_to": "replies" if i % 2 else None}) for i in range(40)]
    raws[7] = pack({**HEADER, "job_id": "job\n7"})
    raws[20] = pack({**HEADER, "kid": "bd-dhaka/vX"})
    raws[33] = pack({**HEADER, "job_id": "job-33", "reply_to": "re plies"})
    out = sealer.open_headers("bd-dhaka", raws)
    refused = {i: str(h) for i, h in enumerate(out) if isinstance(h, MessageError)}
    assert sorted(refused) == [7, 20, 33]
    assert "$.job_id" in refused[7] and "$.kid" in refused[20] and "$.reply_to" in refused[33]
    assert all(h.job_id == f"job-{i}" for i, h in enumerate(out) if i not in refused)


@pytest.mark.parametrize("change", [{"extra": 1}, {"v": None}])
def test_header_without_a_known_shape_is_refused(change: dict[str, object]) -> None:
    import msgspec

    header = {k: v for k, v in {**HEADER, **change}.items() if v is not None or k != "v"}
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.Decoder(JobHeader).decode(pack(header))


def test_small_payloads_stay_plain_msgpack_and_both_forms_read() -> None:
    codec = Codec()
    small = codec.encode({"label": "math"})
    assert small == pack({"label": "math"})  # zstd would only add bytes
    large = codec.encode({"text": "ami " * 200})
    assert large[:4] == b"\x28\xb5\x2f\xfd"
    assert codec.decode(small) == {"label": "math"} and codec.decode(large) == {"text": "ami " * 200}
    with pytest.raises(DecodeError, match="neither"):
        codec.decode(pack([1, 2]))  # plain msgpack must be a map


def test_one_codec_is_safe_to_share_between_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    codec = Codec(level=3)
    payloads = [{"text": f"উত্তর {i} " * (50 + i % 200), "i": i} for i in range(400)]

    def round_trip(p: dict) -> bool:
        return codec.decode(codec.encode(p)) == p

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(round_trip, payloads * 5))
