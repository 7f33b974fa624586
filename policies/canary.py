"""Canary splits by a stable hash of the request id.

The bucket of a request is blake2b(model name, request id) read as an integer modulo 10 000, so the
same request id always lands on the same version on every device and in every process (Python's
`hash()` is salted per process and would not), and different models split independently.
"""

from __future__ import annotations

from hashlib import blake2b

from policies.model import ModelSpec

__all__ = ["BUCKETS", "canary_bucket", "choose_version"]

BUCKETS = 10_000
"""Resolution of a split: 0.01 percentage points."""


def canary_bucket(model: str, request_id: str) -> int:
    digest = blake2b(f"{model}\x00{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def choose_version(model: ModelSpec, request_id: str) -> tuple[str, int]:
    """The version serving `request_id`, and the bucket that chose it.

    Versions own consecutive bucket ranges in the order they are listed, each as wide as its share.
    """
    bucket = canary_bucket(model.name, request_id)
    upper = 0.0
    for v in model.versions:
        upper += v.canary_percent * BUCKETS / 100.0
        if bucket < round(upper):
            return v.version, bucket
    # Only reachable through float rounding at the very top: the last version with a share owns it.
    last = next(v for v in reversed(model.versions) if v.canary_percent > 0)
    return last.version, bucket
