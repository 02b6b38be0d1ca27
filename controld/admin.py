"""controld's admin HTTP API: status of the registry link and the discovery view, metrics.

* ``GET /v1/status``: JSON ``{"registry": {...}, "discovery": {...}}`` (see :func:`status_json`).
* ``GET /metrics``: the daemon's own Prometheus registry, text format.
* ``GET /ready``: 200 once the daemon is up (registry server bound, first watch attempted),
  503 before and while stopping; ``GET /live``: always 200.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from controld.discovery import DiscoveryView, WatcherStatus

__all__ = ["RegistryLink", "build_admin_app", "status_json"]


@dataclass(frozen=True)
class RegistryLink:
    """Which registry controld follows and how."""

    #: ``"embedded"`` (served by this daemon) or ``"external"``.
    mode: str
    #: ``http(s)://host:port`` of the registry.
    address: str


def status_json(link: RegistryLink, status: WatcherStatus, view: DiscoveryView) -> dict[str, Any]:
    """The ``/v1/status`` document for one moment."""
    return {
        "registry": {
            "mode": link.mode,
            "address": link.address,
            "connected": status.connected,
            "last_error": status.last_error,
            "last_contact": status.last_contact,
            "last_index": status.last_index,
            "errors": status.errors,
        },
        "discovery": {
            "version": view.version,
            "services": {
                name: [
                    {
                        "host": ep.host,
                        "port": ep.port,
                        "instance_id": ep.instance_id,
                        "sidecar": ep.sidecar,
                    }
                    for ep in endpoints
                ]
                for name, endpoints in view.services.items()
            },
        },
    }


class _Collected:
    """Metric families already collected, so they can be formatted in another thread."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def build_admin_app(
    status: Callable[[], dict[str, Any]],
    metrics: CollectorRegistry,
    is_ready: Callable[[], bool],
) -> Starlette:
    """The admin app: ``status()`` as ``/v1/status``, ``metrics`` as ``/metrics``.

    Handlers are ``async def`` so they run on the Trio thread, where the watcher's state is
    safe to read (Starlette runs plain functions in worker threads).
    """

    async def status_view(_: Request) -> Response:
        return JSONResponse(status())

    async def metrics_view(_: Request) -> Response:
        # Collect on the Trio thread (live state); format the frozen families in a thread.
        families = list(metrics.collect())
        body = await trio.to_thread.run_sync(generate_latest, _Collected(families))
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def ready(_: Request) -> Response:
        if is_ready():
            return PlainTextResponse("ready")
        return PlainTextResponse("not ready", status_code=503)

    async def live(_: Request) -> Response:
        return PlainTextResponse("live")

    get = ["GET"]
    return Starlette(
        routes=[
            Route("/v1/status", status_view, methods=get),
            Route("/metrics", metrics_view, methods=get),
            Route("/ready", ready, methods=get),
            Route("/live", live, methods=get),
        ]
    )
