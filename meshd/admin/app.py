"""The admin ASGI app: a handful of read-only views over the sidecar plus ``POST /drain``.

GET never changes anything. The one state-changing endpoint, ``POST /drain``, also passes
:func:`meshd.admin.origin.refusal`: JSON content type, no cross-origin or cross-site browser
request, a local ``Host``.

A plain ASGI callable rather than a web framework: eight fixed routes don't need one, and
Starlette (with anyio) cost every sidecar process about a megabyte of resident memory.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from meshd.admin.origin import refusal
from meshd.memory import return_free_heap

__all__ = ["AdminApp", "AdminBackend", "build_admin_app"]

_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json"
#: A view's answer: status, content type, body.
Answer = tuple[int, bytes, bytes]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]


class AdminBackend(Protocol):
    """What the admin API needs from the running sidecar."""

    def is_ready(self) -> bool:
        """True once listeners are bound and their clusters are warm."""

    def is_draining(self) -> bool:
        """True once a drain has begun."""

    def config_dump(self) -> dict[str, Any]:
        """The bootstrap and the snapshot in service, JSON-able."""

    def listeners_info(self) -> list[dict[str, Any]]:
        """One JSON-able entry per listener."""

    def clusters_info(self) -> list[dict[str, Any]]:
        """One JSON-able entry per cluster (endpoints, health, pool)."""

    def stats_info(self) -> dict[str, Any]:
        """Flat counters, as from :meth:`meshd.stats.Stats.as_json`."""

    def start_drain(self) -> None:
        """Begin draining and return at once."""


def _text(status: int, text: str) -> Answer:
    return status, _TEXT, text.encode("utf-8")


def _json(value: object, status: int = 200) -> Answer:
    # Compact, as Starlette's JSONResponse wrote it.
    body = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return status, _JSON, body.encode("utf-8")


class AdminApp:
    """The admin API as an ASGI app (``http`` scopes; other scope types are refused).

    Views run on the Trio thread: the backend and the stats are only safe to read there.
    """

    def __init__(self, backend: AdminBackend, metrics: Callable[[], bytes]) -> None:
        self._backend = backend
        self._metrics_text = metrics
        self._scraped = False
        get: dict[str, Callable[[], Awaitable[Answer]]] = {
            "/ready": self._ready,
            "/live": self._live,
            "/config_dump": self._config_dump,
            "/listeners": self._listeners,
            "/clusters": self._clusters,
            "/stats": self._stats,
            "/metrics": self._metrics,
        }
        self._get = get

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        """Answer one request."""
        if scope["type"] != "http":
            return  # lifespan and websockets: nothing to do
        path, method = scope["path"], scope["method"]
        if path in self._get:
            answer = await self._get[path]() if method in ("GET", "HEAD") else None
            allow = b"GET, HEAD"
        elif path == "/drain":
            answer = None
            if method == "POST":
                await _read_body(receive)
                answer = self._drain(scope)
            allow = b"POST"
        else:
            answer, allow = _text(404, "Not Found"), b""
        headers: list[tuple[bytes, bytes]] = []
        if answer is None:
            answer = _text(405, "Method Not Allowed")
            headers.append((b"allow", allow))
        status, content_type, body = answer
        headers.append((b"content-type", content_type))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    async def _ready(self) -> Answer:
        if self._backend.is_draining():
            return _text(503, "draining")
        if self._backend.is_ready():
            return _text(200, "ready")
        return _text(503, "not ready")

    async def _live(self) -> Answer:
        return _text(200, "live")

    async def _config_dump(self) -> Answer:
        return _json(self._backend.config_dump())

    async def _listeners(self) -> Answer:
        return _json(self._backend.listeners_info())

    async def _clusters(self) -> Answer:
        return _json(self._backend.clusters_info())

    async def _stats(self) -> Answer:
        return _json(self._backend.stats_info())

    async def _metrics(self) -> Answer:
        # On the Trio thread, where the counters are safe to read. Writing the text costs
        # ~1 us per sample (~10 ms for 500 request label sets, ~9,000 samples): less than
        # prometheus-client spent collecting its families on this thread before, so no
        # worker thread (which took the formatting, ~8 us per sample, off it).
        body = self._metrics_text()
        if not self._scraped:
            self._scraped = True
            # The first scrape's imports free what they read and compiled on the way, pages
            # among live blocks that glibc returns only when asked: ~0.5 MB (issue 15).
            return_free_heap()
        # Loaded with the body's first call, not before: the metrics modules are the first
        # scrape's (meshd.sidecar_base.SidecarBase.metrics_text).
        from meshd.exposition import CONTENT_TYPE

        return 200, CONTENT_TYPE.encode("ascii"), body

    def _drain(self, scope: MutableMapping[str, Any]) -> Answer:
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            # Like Starlette's Headers.get: the first value of a repeated header.
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        refused = refusal(headers)
        if refused is not None:
            status, reason = refused
            return _json({"error": reason}, status)
        self._backend.start_drain()
        return _json({"draining": True}, 202)


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return body
        body += bytes(message.get("body", b""))
        if not message.get("more_body", False):
            return body


def build_admin_app(backend: AdminBackend, metrics: Callable[[], bytes]) -> AdminApp:
    """The admin app serving ``backend``, and at ``/metrics`` the Prometheus text ``metrics()``
    returns (called on the Trio thread at each scrape)."""
    return AdminApp(backend, metrics)
