"""The broker exporter's engine: a sampler with an in-memory history, and the HTTP app serving it.

    GET /metrics       Prometheus text of the latest sample (`hybrid_redis_up 0` when Redis cannot be read)
    GET /api/status    JSON: the latest sample, plus per-lane backlog over the last minutes
    GET /              the status page (one self-contained HTML page, inline JS/SVG, no CDN)

`Monitor` samples `broker.metrics.QueueMetrics` every `interval_s` seconds into a ring of
`history_s` seconds; every endpoint serves the latest sample, so they agree with each other and a
scrape or a health probe never waits on a slow Redis. The app is plain routing (`respond`) wrapped
for any server: `wsgi_app` (mount it in a WSGI server), `asgi_app` (an ASGI callable, e.g.
`app.mount("/status", asgi_app(monitor))` in FastAPI — paths on the page are relative), and
`serve` (a threaded stdlib HTTP server in a background thread). `hybrid up` serves the same app.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST

from broker.metrics import QueueMetrics, Snapshot, redacted
from hybrid.status_page import PAGE


@dataclass(frozen=True)
class Point:
    t_ms: int  # local wall clock of the sample
    up: bool
    backlog: dict[str, int]  # "<zone>/<lane>" → backlog


class Monitor:
    """Samples queue figures every `interval_s` and keeps `history_s` seconds of per-lane backlog."""

    def __init__(
        self,
        metrics: QueueMetrics,
        *,
        interval_s: float = 5.0,
        history_s: float = 900.0,
        on_change: Callable[[Snapshot], None] | None = None,
    ) -> None:
        """`on_change(snapshot)` is called whenever Redis goes from readable to not, or back."""
        if interval_s <= 0 or history_s < interval_s:
            raise ValueError("interval must be above 0 and history at least one interval")
        self.metrics = metrics
        self.interval_s = interval_s
        self.history_s = history_s
        self.history: deque[Point] = deque(maxlen=max(int(history_s / interval_s), 1) + 1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._was_up: bool | None = None
        self.on_change = on_change

    @property
    def latest(self) -> Snapshot:
        return self.metrics.latest

    def refresh(self) -> Snapshot:
        """Take a sample now (it also goes into the history)."""
        snap = self.metrics.sample()
        point = Point(
            time.time_ns() // 1_000_000, snap.redis_up, {f"{ln.zone}/{ln.lane}": ln.backlog for ln in snap.lanes}
        )
        with self._lock:
            self.history.append(point)
            changed = snap.redis_up != self._was_up
            self._was_up = snap.redis_up
        if changed and self.on_change is not None:
            self.on_change(snap)
        return snap

    def start(self) -> Monitor:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="hybrid-monitor", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.interval_s)

    def status(self) -> dict[str, Any]:
        """What /api/status returns: the latest sample and the backlog history."""
        snap = self.latest
        with self._lock:
            points = list(self.history)
        series = sorted({k for p in points for k in p.backlog} | {f"{ln.zone}/{ln.lane}" for ln in snap.lanes})
        return {
            "redis": {"up": snap.redis_up, "error": snap.error, "version": snap.redis_version},
            "redis_url": self.metrics_url,
            "interval_s": self.interval_s,
            "history_s": self.history_s,
            "failures": self.metrics.failures,
            "snapshot": snap.to_dict(),
            "history": {
                "t_ms": [p.t_ms for p in points],
                "up": [p.up for p in points],
                "series": {k: [p.backlog.get(k) for p in points] for k in series},
            },
        }

    @property
    def metrics_url(self) -> str:
        return redacted(self.metrics.url)


Response = tuple[int, str, bytes]


def respond(monitor: Monitor, path: str) -> Response:
    """Route one GET: (status, content type, body)."""
    path = path.split("?", 1)[0].rstrip("/") or "/"
    if not monitor.history:  # never sampled (a monitor that was not started): sample now
        monitor.refresh()
    if path == "/metrics":  # the background sample: a scrape never waits on a slow or hung Redis
        return 200, CONTENT_TYPE_LATEST, monitor.metrics.exposition(refresh=False)
    if path == "/api/status":
        body = json.dumps(monitor.status(), separators=(",", ":")).encode()
        return 200, "application/json", body
    if path in ("/", "/index.html"):
        return 200, "text/html; charset=utf-8", PAGE.encode()
    if path == "/healthz":
        return 200, "text/plain; charset=utf-8", b"ok\n"
    return 404, "text/plain; charset=utf-8", b"not found: try /, /metrics or /api/status\n"


_REASONS = {200: "200 OK", 404: "404 Not Found", 405: "405 Method Not Allowed"}

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def wsgi_app(monitor: Monitor) -> WSGIApp:
    """The page, JSON and metrics as a WSGI application."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            status, ctype, body = 405, "text/plain; charset=utf-8", b"only GET\n"
        else:
            status, ctype, body = respond(monitor, environ.get("PATH_INFO", "/") or "/")
        headers = [("Content-Type", ctype), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
        start_response(_REASONS[status], headers)
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]

    return app


def asgi_app(monitor: Monitor) -> Callable[..., Any]:
    """The same as an ASGI application (for uvicorn, or mounted in Starlette/FastAPI)."""
    import anyio.to_thread

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope.get("method", "GET") not in ("GET", "HEAD"):
            status, ctype, body = 405, "text/plain; charset=utf-8", b"only GET\n"
        else:
            path = scope.get("path", "/")
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            status, ctype, body = await anyio.to_thread.run_sync(respond, monitor, path or "/")
        headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(monitor: Monitor, host: str = "127.0.0.1", port: int = 9470) -> WSGIServer:
    """Serve the app on a threaded stdlib server in a background thread.

    Stop it with `.shutdown()` then `.server_close()`; port 0 picks a free port (`.server_address`)."""
    server = make_server(host, port, wsgi_app(monitor), server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="hybrid-exporter-http", daemon=True).start()
    return server


__all__ = ["Monitor", "Point", "asgi_app", "respond", "serve", "wsgi_app"]
