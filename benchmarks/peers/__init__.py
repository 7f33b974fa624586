"""Peer-queue baselines for the broker benchmark: RQ, arq and Celery doing the same no-op job.

Each peer runs in a virtual environment of its own, because their pins conflict (arq 0.28 needs
redis-py < 6, Celery's kombu needs redis-py >= 6.1) and none of them may leak into the project's
environment. The environments live under a cache directory, one per peer and pin set::

    $HYB_BENCH_PEER_CACHE/<peer>-<pinhash>/     (default ~/.cache/hybrid-ai-stack/bench-peers)

and are reused while their marker file still names the same pins. Inside an environment the peer's
runner script (``<peer>_peer.py`` next to this file, stdlib + the peer library only) enqueues the
jobs, runs the peer's own worker in a child process, times first enqueue -> all results stored, and
prints one JSON line, which :func:`run_peer` turns into a :class:`PeerResult`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PEERS",
    "PEER_PINS",
    "PeerError",
    "PeerResult",
    "default_cache_dir",
    "ensure_peer_env",
    "peer_env_dir",
    "run_peer",
]

PEERS: tuple[str, ...] = ("rq", "arq", "celery")

# What pip installs into each peer's environment. Changing a pin changes the directory's hash, so
# an old environment is never reused for new pins.
PEER_PINS: dict[str, tuple[str, ...]] = {
    # hiredis everywhere: redis-py's recommended parser, which the project itself uses too
    "rq": ("rq==2.12.0", "hiredis>=3"),
    "arq": ("arq==0.28.0", "redis<6", "hiredis>=3"),
    "celery": ("celery[redis]==5.7.0", "hiredis>=3"),
}

# Each peer's library, imported once after installation as a smoke test.
_PEER_MODULE: dict[str, str] = {"rq": "rq", "arq": "arq", "celery": "celery"}

CACHE_ENV_VAR = "HYB_BENCH_PEER_CACHE"
_MARKER = ".hybrid-peer-pins"
_FREEZE = "pip-freeze.txt"
_HERE = Path(__file__).resolve().parent
_STDERR_TAIL = 4000
_STOP_GRACE_S = 15.0  # how long a runner told to stop may take to stop its worker and clean up


class PeerError(RuntimeError):
    """A peer's environment could not be built, or its runner failed or timed out."""


@dataclass(frozen=True)
class PeerResult:
    name: str
    jobs_per_s: float
    seconds: float
    jobs: int
    config: str


def _say(message: str) -> None:
    print(f"[bench-peers] {message}", file=sys.stderr, flush=True)


def _tail(text: str, limit: int = _STDERR_TAIL) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def _check_name(name: str) -> None:
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; expected one of {', '.join(PEERS)}")


def default_cache_dir() -> Path:
    """Where peer environments go: $HYB_BENCH_PEER_CACHE, else <XDG cache>/hybrid-ai-stack/bench-peers."""
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "hybrid-ai-stack" / "bench-peers"


def _marker_text(name: str) -> str:
    # The interpreter is part of the identity: a venv is bound to the Python that created it.
    lines = [
        f"peer={name}",
        f"python={sys.version_info.major}.{sys.version_info.minor}",
        f"base={sys.base_prefix}",
        *PEER_PINS[name],
    ]
    return "\n".join(lines) + "\n"


def peer_env_dir(name: str, cache_dir: Path | None = None) -> Path:
    """The directory of `name`'s environment for the current pins (it may not exist yet)."""
    _check_name(name)
    pinhash = hashlib.sha256(_marker_text(name).encode()).hexdigest()[:12]
    return (cache_dir if cache_dir is not None else default_cache_dir()) / f"{name}-{pinhash}"


def _venv_python(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def _is_ready(env_dir: Path, marker: str) -> bool:
    try:
        return (env_dir / _MARKER).read_text() == marker and _venv_python(env_dir).exists()
    except OSError:
        return False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two benchmark runs do not build the same environment at once."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _step(args: list[str], what: str, timeout_s: float) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise PeerError(f"{what}: timed out after {timeout_s:.0f} s") from exc
    except OSError as exc:
        raise PeerError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        raise PeerError(f"{what}: exit status {done.returncode}\n{_tail(done.stdout + done.stderr)}")
    return done.stdout


def ensure_peer_env(name: str, cache_dir: Path | None = None) -> Path:
    """Build (or reuse) `name`'s virtual environment and return the path of its python.

    The environment is created with ``sys.executable -m venv`` and filled by its own pip with
    :data:`PEER_PINS`; the project's environment is never touched. Progress goes to stderr, one
    line per step.
    """
    env_dir = peer_env_dir(name, cache_dir)
    marker = _marker_text(name)
    python = _venv_python(env_dir)
    if _is_ready(env_dir, marker):
        return python
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    with _locked(env_dir.parent / f".{env_dir.name}.lock"):
        if _is_ready(env_dir, marker):  # another run built it while we waited for the lock
            return python
        started = time.monotonic()
        if env_dir.exists():
            _say(f"{name}: removing incomplete environment {env_dir}")
            shutil.rmtree(env_dir)
        _say(f"{name}: creating virtual environment {env_dir}")
        _step([sys.executable, "-m", "venv", str(env_dir)], f"{name}: python -m venv", 300)
        pins = PEER_PINS[name]
        _say(f"{name}: installing {' '.join(pins)} (first run only; this takes a while)")
        _step(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins],
            f"{name}: pip install",
            900,
        )
        _say(f"{name}: checking that {_PEER_MODULE[name]} imports")
        _step([str(python), "-c", f"import {_PEER_MODULE[name]}"], f"{name}: import check", 120)
        freeze = _step([str(python), "-m", "pip", "freeze", "--all"], f"{name}: pip freeze", 120)
        (env_dir / _FREEZE).write_text(freeze)
        (env_dir / _MARKER).write_text(marker)  # written last: its presence means "complete"
        _say(f"{name}: environment ready in {time.monotonic() - started:.0f} s")
    return python


def _clean_env() -> dict[str, str]:
    """The environment for a peer runner: nothing that could pull the project's packages in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _kill_group(proc: subprocess.Popen[str]) -> None:
    # The runner was started in a session of its own, so its process group holds exactly the runner
    # and the worker it spawned. Only called while the runner is not yet reaped, so the group id
    # cannot have been reused.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _stop_runner(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Ask the runner to stop (SIGTERM: it stops its worker and deletes its keys), then kill its group."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return proc.communicate()


def _parse_result(name: str, stdout: str, stderr: str) -> PeerResult:
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise PeerError(f"peer {name}: runner printed no result\n{_tail(stderr)}")
    try:
        data = json.loads(lines[-1])
        return PeerResult(
            name=str(data["peer"]),
            jobs_per_s=float(data["jobs_per_s"]),
            seconds=float(data["seconds"]),
            jobs=int(data["jobs"]),
            config=str(data["config"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise PeerError(f"peer {name}: unreadable result line {lines[-1]!r}: {exc}\n{_tail(stderr)}") from exc


def run_peer(
    name: str,
    redis_url: str,
    jobs: int,
    payload_bytes: int,
    cache_dir: Path | None = None,
    timeout_s: float = 180,
) -> PeerResult:
    """Run `jobs` no-op jobs with a `payload_bytes` argument through peer `name` on `redis_url`.

    Builds the peer's environment first if needed (that time is not part of `timeout_s`). Raises
    :class:`PeerError`, with the tail of the runner's stderr, if the runner fails or overruns.
    """
    _check_name(name)
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    if payload_bytes < 0:
        raise ValueError("payload_bytes must not be negative")
    python = ensure_peer_env(name, cache_dir)
    script = _HERE / f"{name}_peer.py"
    # The runner's own deadline covers its waits; leave it room to stop its worker and clean up.
    inner_timeout = max(timeout_s - 20.0, timeout_s * 0.75)
    args = [
        str(python),
        str(script),
        "--redis-url",
        redis_url,
        "--jobs",
        str(jobs),
        "--payload-bytes",
        str(payload_bytes),
        "--timeout",
        f"{inner_timeout:.1f}",
    ]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=str(_HERE),
        env=_clean_env(),
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        _, stderr = _stop_runner(proc)
        raise PeerError(f"peer {name}: runner timed out after {timeout_s:.0f} s\n{_tail(stderr)}") from exc
    finally:
        if proc.poll() is None:  # interrupted (e.g. Ctrl-C): do not leave the runner or its worker behind
            _stop_runner(proc)
    if proc.returncode != 0:
        raise PeerError(f"peer {name}: runner exited with status {proc.returncode}\n{_tail(stderr)}")
    return _parse_result(name, stdout, stderr)
