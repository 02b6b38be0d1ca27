"""The admin ASGI app: a handful of read-only views over the sidecar plus ``POST /drain``.

GET never changes anything. The one state-changing endpoint, ``POST /drain``, also passes
:func:`meshd.admin.origin.refusal`: JSON content type, no cross-origin or cross-site browser
request, a local ``Host``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from meshd.admin.origin import refusal

__all__ = ["AdminBackend", "build_admin_app"]


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


def build_admin_app(backend: AdminBackend, registry: CollectorRegistry) -> Starlette:
    """The admin app serving ``backend`` and the metrics in ``registry``.

    Handlers are ``async def`` on purpose: Starlette would run plain functions in a worker
    thread, and the backend and the stats are only safe to read from the Trio thread.
    """

    async def ready(_: Request) -> Response:
        if backend.is_draining():
            return PlainTextResponse("draining", status_code=503)
        if backend.is_ready():
            return PlainTextResponse("ready")
        return PlainTextResponse("not ready", status_code=503)

    async def live(_: Request) -> Response:
        return PlainTextResponse("live")

    async def config_dump(_: Request) -> Response:
        return JSONResponse(backend.config_dump())

    async def listeners(_: Request) -> Response:
        return JSONResponse(backend.listeners_info())

    async def clusters(_: Request) -> Response:
        return JSONResponse(backend.clusters_info())

    async def stats(_: Request) -> Response:
        return JSONResponse(backend.stats_info())

    async def metrics(_: Request) -> Response:
        # Collecting reads live proxy state, so it stays on the Trio thread. Formatting the
        # immutable families is the expensive part (~10 us per sample in prometheus_client):
        # a thread turns one long loop stall into GIL-switch-sized slices.
        families = list(registry.collect())
        body = await trio.to_thread.run_sync(generate_latest, _Collected(families))
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def drain(request: Request) -> Response:
        refused = refusal(request.headers)
        if refused is not None:
            status, reason = refused
            return JSONResponse({"error": reason}, status_code=status)
        backend.start_drain()
        return JSONResponse({"draining": True}, status_code=202)

    get = ["GET"]
    return Starlette(
        routes=[
            Route("/ready", ready, methods=get),
            Route("/live", live, methods=get),
            Route("/config_dump", config_dump, methods=get),
            Route("/listeners", listeners, methods=get),
            Route("/clusters", clusters, methods=get),
            Route("/stats", stats, methods=get),
            Route("/metrics", metrics, methods=get),
            Route("/drain", drain, methods=["POST"]),
        ]
    )
