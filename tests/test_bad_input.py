"""The tamper matrix: every kind of bad message goes to the dead-letter stream with its reason, and
the good messages read in the same batch are processed all the same."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from broker import keys
from broker.codec import Codec, pack, unpack
from broker.consumer import Consumer
from broker.dead_letter import DeadLetters
from broker.envelope import Envelope
from broker.keyring import LocalKeyring
from broker.message import BODY_FIELD, HEADER_FIELD, JobSpec, Sealer

Entry = dict[bytes, bytes]


def flip(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 0x01
    return bytes(b)


def sealed(sealer: Sealer, zone: str, **inputs: object) -> Entry:
    _, hb, body = sealer.seal_job(zone, JobSpec(task="classify", inputs=inputs))
    return {HEADER_FIELD: hb, BODY_FIELD: body}


def seal_raw(sealer: Sealer, zone: str, plaintext: bytes, **header_changes: object) -> Entry:
    """A correctly encrypted body around arbitrary plaintext, under a header with arbitrary fields."""
    base = unpack(sealed(sealer, zone)[HEADER_FIELD])
    base.update(header_changes)

    def header_for(kid: str) -> bytes:
        return pack({**base, "kid": kid})

    hb, body = sealer.envelope.seal(zone, plaintext, header_for)
    return {HEADER_FIELD: hb, BODY_FIELD: body}


def tampered_body(s: Sealer, zone: str, tmp: Path) -> Entry:
    e = sealed(s, zone, q="x")
    return {**e, BODY_FIELD: flip(e[BODY_FIELD], len(e[BODY_FIELD]) - 5)}


def edited_header(s: Sealer, zone: str, tmp: Path) -> Entry:
    e = sealed(s, zone, q="x")
    h = unpack(e[HEADER_FIELD])
    h["tenant"] = "someone-else"  # still a valid header, but not the one the body was sealed under
    return {**e, HEADER_FIELD: pack(h)}


def garbled_header(s: Sealer, zone: str, tmp: Path) -> Entry:
    e = sealed(s, zone, q="x")
    return {**e, HEADER_FIELD: b"\xc1" + e[HEADER_FIELD][1:]}


def wrong_kek_version(s: Sealer, zone: str, tmp: Path) -> Entry:
    src = s.envelope.provider.path  # type: ignore[attr-defined]
    ahead = tmp / "ahead.json"
    shutil.copy(src, ahead)
    LocalKeyring.rotate(ahead, zone)  # a v2 the worker's keyring never got
    return sealed(Sealer(Envelope(LocalKeyring(ahead))), zone, q="x")


def other_zone(s: Sealer, zone: str, tmp: Path) -> Entry:
    path = tmp / "other.json"
    LocalKeyring.init_zone(path, "elsewhere")
    return sealed(Sealer(Envelope(LocalKeyring(path))), "elsewhere", q="x")


def unknown_schema(s: Sealer, zone: str, tmp: Path) -> Entry:
    return seal_raw(s, zone, Codec().encode({"inputs": {}}), v=99)


def truncated_body(s: Sealer, zone: str, tmp: Path) -> Entry:
    e = sealed(s, zone, q="x")
    return {**e, BODY_FIELD: e[BODY_FIELD][:30]}


def not_zstd(s: Sealer, zone: str, tmp: Path) -> Entry:
    return seal_raw(s, zone, b"plain bytes, no zstd frame")


def not_msgpack(s: Sealer, zone: str, tmp: Path) -> Entry:
    import zstandard

    return seal_raw(s, zone, zstandard.ZstdCompressor().compress(b"\xc1\xc1\xc1"))


def invalid_payload(s: Sealer, zone: str, tmp: Path) -> Entry:
    return seal_raw(s, zone, Codec().encode({"inputs": {}, "surprise": 1}))


def oversized(s: Sealer, zone: str, tmp: Path) -> Entry:
    big = Sealer(s.envelope, Codec(max_payload_bytes=8 << 20, level=1))
    import os

    return sealed(big, zone, blob=os.urandom(2 << 20))  # incompressible, over the worker's 1 MiB


def tampered_with_extra_field(s: Sealer, zone: str, tmp: Path) -> Entry:
    """An entry with a field besides h and b (read by the slow path): the dead letter keeps it too."""
    return {**tampered_body(s, zone, tmp), b"note": b"added by some other tool"}


def missing_fields(s: Sealer, zone: str, tmp: Path) -> Entry:
    return {b"hello": b"world"}


CASES: dict[str, tuple[Callable[[Sealer, str, Path], Entry], str]] = {
    "tampered body": (tampered_body, "tampered"),
    "edited header": (edited_header, "tampered"),
    "garbled header": (garbled_header, "malformed"),
    "wrong KEK version": (wrong_kek_version, "unknown_key"),
    "job of another zone": (other_zone, "zone_mismatch"),
    "unknown schema version": (unknown_schema, "unsupported_schema"),
    "truncated body": (truncated_body, "malformed"),
    "body not zstd": (not_zstd, "undecodable"),
    "body not msgpack": (not_msgpack, "undecodable"),
    "payload with unknown field": (invalid_payload, "undecodable"),
    "oversized body": (oversized, "too_large"),
    "entry without h/b": (missing_fields, "malformed"),
    "tampered body, extra field": (tampered_with_extra_field, "tampered"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_message_is_dead_lettered_and_neighbours_are_processed(
    case: str, r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str, tmp_path: Path
) -> None:
    make, reason = CASES[case]
    stream = keys.jobs_stream(zone, "interactive")
    good_before = sealed(sealer, zone, q="before")
    bad = make(sealer, zone, tmp_path)
    good_after = sealed(sealer, zone, q="after")
    ids = [r.xadd(stream, e) for e in (good_before, bad, good_after)]  # type: ignore[arg-type]

    consumer = Consumer(r, Sealer(Envelope(LocalKeyring(keyring_path, zones=[zone]))), zone, "w1", count=10)
    deliveries = consumer.fetch(block_ms=0)  # one read holds all three
    assert [d.job.payload.inputs["q"] for d in deliveries] == ["before", "after"]
    consumer.complete([(d, {"ok": True}) for d in deliveries])

    [letter] = DeadLetters(r, zone).list()
    assert letter.reason == reason, letter.detail
    assert letter.detail
    assert letter.source == stream and letter.source_id == ids[1].decode()
    assert letter.original == bad  # kept byte for byte
    assert letter.deliveries == 1 and letter.consumer == "w1"
    assert consumer.stats.dead_lettered[reason] == 1
    assert r.xlen(stream) == 0  # nothing left behind, nothing lost: 2 results + 1 dead letter
    assert r.xpending(stream, keys.GROUP)["pending"] == 0


def test_dead_letter_replay_and_purge(r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str) -> None:
    stream = keys.jobs_stream(zone, "batch")
    good = sealed(sealer, zone, q="fine")
    r.xadd(stream, {HEADER_FIELD: good[HEADER_FIELD], BODY_FIELD: flip(good[BODY_FIELD], 3)})
    consumer = Consumer(r, Sealer(Envelope(LocalKeyring(keyring_path))), zone, "w1")
    assert consumer.fetch(block_ms=0) == []
    dlq = DeadLetters(r, zone)
    [letter] = dlq.list()
    assert letter.job_id == unpack(good[HEADER_FIELD])["job_id"]
    assert letter.header() == unpack(good[HEADER_FIELD])
    new_id = dlq.replay(letter.entry_id)
    assert new_id is not None and dlq.size() == 0
    assert r.xrange(stream)[0][1] == letter.original  # back on its stream, unchanged
    assert dlq.replay(letter.entry_id) is None  # replaying twice does nothing
    assert consumer.fetch(block_ms=0) == []  # still tampered: back in the DLQ
    assert dlq.size() == 1
    assert dlq.purge() == 1 and dlq.size() == 0
