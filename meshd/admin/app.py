"""The admin ASGI app: a handful of read-only views over the sidecar plus ``POST /drain``.

GET never changes anything. The one state-changing endpoint, ``POST /drain``, also passes
:func:`meshd.admin.origin.refusal`: JSON content type, no cross-origin or cross-site browser
request, a local ``Host``.

A plain ASGI callable rather than a web framework: eight fixed routes don't need one, and
Starlette (with anyio) cost every sidecar process about a megabyte of resident memory.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

import trio

from meshd.admin.origin import refusal
from meshd.memory import return_free_heap

if TYPE_CHECKING:
    # prometheus-client loads at the first scrape (:data:`_SCRAPE_MODULES`).
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

__all__ = ["AdminApp", "AdminBackend", "build_admin_app"]

#: What the first scrape loads, not start-up: prometheus-client and the metrics view cost
#: ~3.6 MB of resident memory (with the stdlib HTTP, email and WSGI modules it imports) that a
#: sidecar nobody scrapes never needs (issue 15).
_SCRAPE_MODULES = ("prometheus_client", "meshd.metrics")
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


class _Collected:
    """Metric families already collected, so they can be formatted in another thread."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


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

    def __init__(self, backend: AdminBackend, registry: Callable[[], CollectorRegistry]) -> None:
        self._backend = backend
        self._registry = registry
        self._scrape_ready = False
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
        # Collecting reads live proxy state, so it stays on the Trio thread. Formatting the
        # immutable families is the expensive part (~10 us per sample in prometheus_client):
        # a thread turns one long loop stall into GIL-switch-sized slices.
        first = not self._scrape_ready
        if first:
            # ~40 ms of module code, once: in a worker thread, the Trio thread keeps serving
            # (GIL slices) rather than stalling for all of it.
            await trio.to_thread.run_sync(_import_all, _SCRAPE_MODULES)
            self._scrape_ready = True
        from prometheus_client import CONTENT_TYPE_LATEST

        families = list(self._registry().collect())
        body = await trio.to_thread.run_sync(_format, _Collected(families), first)
        return 200, CONTENT_TYPE_LATEST.encode("ascii"), body

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


def _format(collected: _Collected, first: bool) -> bytes:
    from prometheus_client import generate_latest

    body = generate_latest(collected)
    if first:
        # What the imports and the first formatting freed sits in the worker thread's malloc
        # arena, which glibc doesn't trim by itself: ~0.4 MB of resident memory (issue 15).
        return_free_heap()
    return body


def _import_all(names: Iterable[str]) -> None:
    for name in names:
        importlib.import_module(name)


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return body
        body += bytes(message.get("body", b""))
        if not message.get("more_body", False):
            return body


def build_admin_app(backend: AdminBackend, registry: Callable[[], CollectorRegistry]) -> AdminApp:
    """The admin app serving ``backend`` and the metrics in the registry ``registry()`` returns
    (called at each scrape, so it can be built at the first)."""
    return AdminApp(backend, registry)
