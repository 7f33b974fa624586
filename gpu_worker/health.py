"""The worker's HTTP side: `/live`, `/ready` and `/metrics` for probes and Prometheus.

`/ready` answers 200 only once every model is loaded and while the worker is not draining, so a
worker that loads slowly (or is shutting down) is not counted as capacity by Kubernetes or the
local supervisor. The server is the standard library's, in a daemon thread: no extra dependency
on the GPU image.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class HealthServer:
    """Serves `ready()` and `details()` of a worker, and `registry`'s metrics, on `host:port`."""

    def __init__(
        self,
        ready: Callable[[], bool],
        details: Callable[[], dict[str, Any]],
        registry: CollectorRegistry,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/live":
                    self._send(200, "application/json", b'{"live": true}')
                elif path == "/ready":
                    ok = outer.ready()
                    body = json.dumps({"ready": ok, **outer.details()}).encode()
                    self._send(200 if ok else 503, "application/json", body)
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(outer.registry))
                else:
                    self._send(404, "application/json", json.dumps({"error": f"no such path {path}"}).encode())

            def _send(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: keep logs quiet
                return

        self.ready = ready
        self.details = details
        self.registry = registry
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


__all__ = ["HealthServer"]
