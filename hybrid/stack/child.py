"""Run one of `hybrid up`'s children: exit when the parent `hybrid up` is gone.

`python -m hybrid.stack.child MODULE OBJECT [ARGS…]` starts a thread that watches the parent
process and sends this process SIGTERM when the parent dies (even by SIGKILL: the child is then
re-parented, and `os.getppid()` changes), then runs `MODULE.OBJECT` — a click command
(`.main(args)`) or a function taking the argument list. This replaces `PR_SET_PDEATHSIG` through
`preexec_fn`, which is not safe in a process with threads (a child can deadlock before exec).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from typing import Any


def watch_parent(interval_s: float = 0.5) -> None:
    parent = os.getppid()

    def run() -> None:
        while True:
            threading.Event().wait(interval_s)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=run, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> Any:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        sys.exit("usage: python -m hybrid.stack.child MODULE OBJECT [ARGS...]")
    watch_parent()
    target = getattr(importlib.import_module(args[0]), args[1])
    if hasattr(target, "main"):
        return target.main(args[2:], prog_name="hybrid")
    return target(args[2:])


if __name__ == "__main__":
    sys.exit(main())
