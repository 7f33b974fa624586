"""Job ids: ULIDs (48-bit millisecond time + 80 random bits, Crockford base32, 26 characters).

Sortable by creation time and monotonic within a process: two ids made in the same millisecond
differ by one in their random part, so their order is the order they were made. Written here rather
than taken from a package because id generation sits on the hot path of `submit_many`; the
encoding follows the ULID spec exactly (a test checks it against `python-ulid` when present).
"""

from __future__ import annotations

import base64
import os
import threading
import time

_RFC4648 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_CROCKFORD = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TO_CROCKFORD = bytes.maketrans(_RFC4648, _CROCKFORD)
_RANDOM_MAX = (1 << 80) - 1

_lock = threading.Lock()
_last_ms = -1
_last_random = 0


def encode_ulid(value: int) -> str:
    """Crockford base32 of a 128-bit integer, 26 characters (the top two of 130 bits are zero)."""
    # 17 bytes = 136 bits; the 130 encoded bits sit at the top, so the first 26 base32 digits are exactly them.
    return base64.b32encode((value << 6).to_bytes(17, "big"))[:26].translate(_TO_CROCKFORD).decode()


def new_ulid() -> str:
    global _last_ms, _last_random
    ms = time.time_ns() // 1_000_000
    with _lock:
        if ms <= _last_ms and _last_random < _RANDOM_MAX:
            ms = _last_ms
            rnd = _last_random + 1
        else:
            rnd = int.from_bytes(os.urandom(10), "big")
        _last_ms, _last_random = ms, rnd
    return encode_ulid((ms << 80) | rnd)


def ulid_time_ms(ulid: str) -> int:
    """The millisecond timestamp of a ULID."""
    return int(ulid[:10].translate(str.maketrans(_CROCKFORD.decode(), "0123456789abcdefghijklmnopqrstuv")), 32)


__all__ = ["encode_ulid", "new_ulid", "ulid_time_ms"]
