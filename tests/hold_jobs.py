"""A consumer process that takes jobs and never finishes them — for the SIGKILL reclaim test.

Usage: python tests/hold_jobs.py REDIS_URL ZONE KEYRING COUNT
Prints `HOLDING <n>` once it holds n unacknowledged jobs, then waits to be killed.
"""

from __future__ import annotations

import signal
import sys

from broker.connection import connect
from broker.consumer import Consumer
from broker.envelope import Envelope
from broker.keyring import LocalKeyring
from broker.message import Sealer


def main() -> None:
    url, zone, keyring, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    consumer = Consumer(connect(url), Sealer(Envelope(LocalKeyring(keyring))), zone, "doomed", count=count)
    held = 0
    while held < count:
        held += len(consumer.fetch(count - held, block_ms=1000))
    print(f"HOLDING {held}", flush=True)
    signal.pause()


if __name__ == "__main__":
    main()
