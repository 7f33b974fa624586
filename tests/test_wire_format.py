"""docs/envelope.md is enough to read and write our messages: this test does both with only
`cryptography`, `msgpack` and `zstandard`, following the document rather than our code."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import msgpack
import redis
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap

from broker import keys
from broker.client import Client
from broker.consumer import Consumer
from broker.envelope import Envelope
from broker.keyring import LocalKeyring
from broker.message import Sealer


def unframe(plaintext: bytes) -> bytes:
    """docs/envelope.md: a zstd frame starts with 28 b5 2f fd; otherwise the plaintext is the msgpack itself."""
    return zstandard.ZstdDecompressor().decompress(plaintext) if plaintext[:4] == b"\x28\xb5\x2f\xfd" else plaintext


def kek_of(keyring_path: Path, kid: str) -> bytes:
    zone, version = kid.split("/v")
    doc = json.loads(keyring_path.read_text())
    return base64.b64decode(doc["zones"][zone]["keys"][version]["key"])


def test_a_foreign_reader_opens_our_job(r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str) -> None:
    question = "নদীর নাম কী? " * 30  # long enough to be compressed
    Client(r, sealer, zone).submit("classify", {"question": question}, tenant="school-1")
    [(_, fields)] = r.xrange(f"hyb:{{{zone}}}:jobs:interactive")
    assert set(fields) == {b"h", b"b"}
    header_bytes, body = fields[b"h"], fields[b"b"]

    header = msgpack.unpackb(header_bytes, raw=False, strict_map_key=True)
    assert header["v"] == 1 and header["zone"] == zone and header["tenant"] == "school-1"
    assert body[0] == 0x01
    wrapped_len = body[1]
    wrapped = body[2 : 2 + wrapped_len]
    nonce = body[2 + wrapped_len : 14 + wrapped_len]
    dek = aes_key_unwrap(kek_of(keyring_path, header["kid"]), wrapped)
    plaintext = AESGCM(dek).decrypt(nonce, body[14 + wrapped_len :], header_bytes)
    payload = msgpack.unpackb(unframe(plaintext), raw=False)
    assert plaintext[:4] == b"\x28\xb5\x2f\xfd"
    assert payload == {"inputs": {"question": question}, "options": {}}


def test_a_foreign_writer_is_read_by_our_worker(r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str) -> None:
    kid = f"{zone}/v1"
    header_bytes = msgpack.packb(
        {"v": 1, "job_id": "foreign-0001", "tenant": "t", "zone": zone, "task": "echo", "model": "m",
         "lane": "batch", "sensitivity": "public", "kid": kid, "created_ms": int(time.time() * 1000),
         "deadline_ms": None, "reply_to": None, "attempt": 1, "trace_id": None},
        use_bin_type=True,
    )  # fmt: skip
    dek = os.urandom(32)
    nonce = os.urandom(12)
    plaintext = zstandard.ZstdCompressor().compress(msgpack.packb({"inputs": {"x": 42}, "options": {}}))
    wrapped = aes_key_wrap(kek_of(keyring_path, kid), dek)
    body = bytes([1, len(wrapped)]) + wrapped + nonce + AESGCM(dek).encrypt(nonce, plaintext, header_bytes)
    r.xadd(keys.jobs_stream(zone, "batch"), {b"h": header_bytes, b"b": body})

    consumer = Consumer(r, Sealer(Envelope(LocalKeyring(keyring_path))), zone, "w1")
    [delivery] = consumer.fetch(block_ms=0)
    assert delivery.job.job_id == "foreign-0001" and delivery.job.payload.inputs == {"x": 42}
    consumer.complete([(delivery, {"seen": delivery.job.payload.inputs["x"]})])

    stored = r.get(keys.result_key(zone, "foreign-0001"))
    assert stored is not None
    rh_bytes, rbody = msgpack.unpackb(stored, raw=False)
    rh = msgpack.unpackb(rh_bytes, raw=False)
    assert (rh["job_id"], rh["zone"], rh["status"]) == ("foreign-0001", zone, "ok")
    n = rbody[1]
    rdek = aes_key_unwrap(kek_of(keyring_path, rh["kid"]), rbody[2 : 2 + n])
    rplain = AESGCM(rdek).decrypt(rbody[2 + n : 14 + n], rbody[14 + n :], rh_bytes)
    assert msgpack.unpackb(unframe(rplain), raw=False)["output"] == {"seen": 42}
