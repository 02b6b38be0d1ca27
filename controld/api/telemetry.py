"""Telemetry endpoints: sidecar reports in, traffic views and taps out.

``POST /v1/telemetry/{proxy_id}`` is a plain Starlette route placed before the FastAPI routes
(like the snapshot long-poll): a thousand sidecars send one a second. It checks its own
credential (a sidecar token may report only for a proxy of its own service; the admin token
for any id, which the bench's simulated sidecars use), bounds its body
(:data:`MAX_REPORT_BYTES`), is not audited (a report changes no configuration), and answers
the taps the sidecar should sample (:class:`~meshcore.api.report.TelemetryAck`).

The views and taps (admin token) are FastAPI routes; their models are
:mod:`meshcore.api.telemetry`.
"""

# No `from __future__ import annotations`: FastAPI evaluates route signatures, whose
# Annotated aliases are local to the router factories.

import time
from collections.abc import Callable
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Query, Response, Security
from pydantic import ValidationError
from starlette.requests import Request
from starlette.routing import Route

from controld.api.deps import BEARER, Guard
from controld.api.errors import ApiError, error_response, loc_path
from controld.api.peer import authenticate_plain
from controld.api.plane import PushHubAPI
from controld.auth import Principal, TokenAuth
from controld.telemetry import TapHub, TelemetryWindow, UnknownTap
from controld.telemetry.taps import MAX_WAIT_S, TooManyTaps
from meshcore.api.report import TelemetryAck, TelemetryReport
from meshcore.api.telemetry import (
    DEFAULT_WINDOW_S,
    EDGES_PATH,
    ENDPOINTS_PATH,
    INSTANCES_PATH,
    MAX_WINDOW_S,
    ROUTES_PATH,
    SERVICES_PATH,
    TAPS_PATH,
    EdgesTelemetry,
    EndpointsTelemetry,
    InstancesTelemetry,
    RoutesTelemetry,
    ServicesTelemetry,
    TapCreated,
    TapEvents,
    TapRequest,
)

__all__ = ["MAX_REPORT_BYTES", "REPORT_PATH", "report_route", "telemetry_router"]

#: Largest telemetry report accepted (a full report of 3 x 256 series is ~150 KB).
MAX_REPORT_BYTES: Final = 512 * 1024
REPORT_PATH: Final = "/v1/telemetry/{proxy_id}"


async def _read_bounded(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is over ``limit`` bytes."""
    announced = request.headers.get("content-length")
    if announced is not None and (not announced.isdigit() or int(announced) > limit):
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def report_route(
    hub: PushHubAPI,
    auth: TokenAuth,
    window: TelemetryWindow,
    taps: TapHub,
    clock: Callable[[], float] = time.time,
) -> Route:
    """The plain route of ``POST /v1/telemetry/{proxy_id}`` (see the module doc)."""

    async def post_report(request: Request) -> Response:
        principal = await authenticate_plain(auth, request)
        if isinstance(principal, Response):
            return principal
        proxy_id: str = request.path_params["proxy_id"]
        descriptor = hub.descriptor(proxy_id)
        if principal.kind != "admin":
            if descriptor is None:
                return error_response(404, "unknown proxy")
            if descriptor.service != principal.service:
                return error_response(
                    403, f"{principal.name} may not act for service {descriptor.service!r}"
                )
        body = await _read_bounded(request, MAX_REPORT_BYTES)
        if body is None:
            return error_response(
                413, f"report over {MAX_REPORT_BYTES} bytes", headers={"Connection": "close"}
            )
        try:
            report = TelemetryReport.model_validate_json(body)
        except ValidationError as exc:
            problems = [
                {"path": "body." + loc_path(e["loc"]), "message": e["msg"]}
                for e in exc.errors()[:20]
            ]
            return error_response(422, "invalid telemetry report", problems)
        if descriptor is not None and report.service != descriptor.service:
            return error_response(
                422,
                "invalid telemetry report",
                [{"path": "body.service", "message": "must be the proxy's registered service"}],
            )
        window.ingest(proxy_id, report, clock())
        if report.tap_events:
            taps.add_events(report.tap_events)
        ack = TelemetryAck(taps=taps.active_for(report.service))
        return Response(ack.model_dump_json(), media_type="application/json")

    return Route(REPORT_PATH, post_report, methods=["POST"], name="post_telemetry")


def telemetry_router(
    hub: PushHubAPI,
    window: TelemetryWindow,
    taps: TapHub,
    guard: Guard,
    clock: Callable[[], float] = time.time,
) -> APIRouter:
    """The traffic views and the tap endpoints (admin token)."""
    router = APIRouter(tags=["telemetry"], dependencies=[Security(BEARER)])
    Admin = Annotated[Principal, Depends(guard.admin)]
    AdminAudited = Annotated[Principal, Depends(guard.admin_audited)]
    Window = Annotated[
        int, Query(ge=1, le=MAX_WINDOW_S, description="seconds (rounded up to 10 s buckets)")
    ]
    Service = Annotated[str, Query(min_length=1, max_length=256, description="destination")]

    def owner_of() -> Callable[[str], str | None]:
        owners: dict[str, str] = {}
        for row in hub.proxies():
            proxy_id = str(row.get("proxy_id", ""))
            descriptor = hub.descriptor(proxy_id)
            if descriptor is not None and descriptor.inbound is not None:
                owners[str(descriptor.inbound)] = proxy_id
        return owners.get

    @router.get(SERVICES_PATH)
    async def telemetry_services(
        _: Admin, window_s: Window = DEFAULT_WINDOW_S
    ) -> ServicesTelemetry:
        """Traffic per destination service, as the calling sidecars counted it."""
        return window.services(window_s, clock())

    @router.get(ROUTES_PATH)
    async def telemetry_routes(
        _: Admin, service: Service, window_s: Window = DEFAULT_WINDOW_S
    ) -> RoutesTelemetry:
        """Traffic per route of ``service``."""
        return window.routes(service, window_s, clock())

    @router.get(ENDPOINTS_PATH)
    async def telemetry_endpoints(
        _: Admin, service: Service, window_s: Window = DEFAULT_WINDOW_S
    ) -> EndpointsTelemetry:
        """Traffic per endpoint (instance) of ``service``."""
        return window.endpoints(service, window_s, clock(), owner_of())

    @router.get(EDGES_PATH)
    async def telemetry_edges(_: Admin, window_s: Window = DEFAULT_WINDOW_S) -> EdgesTelemetry:
        """The service graph: rps, error rate, mTLS per (source, destination, protocol)."""
        return window.edges(window_s, clock())

    @router.get(INSTANCES_PATH)
    async def telemetry_instances(
        _: Admin, window_s: Window = DEFAULT_WINDOW_S
    ) -> InstancesTelemetry:
        """Every sidecar heard from in the last 15 minutes, with its counters over the window."""
        return window.instances(window_s, clock())

    @router.post(TAPS_PATH, responses={429: {"description": "too many active taps"}})
    async def create_tap(_: AdminAudited, body: TapRequest) -> TapCreated:
        """Start a tap: sampled request events matching ``filter``, bounded in rate and time."""
        try:
            return taps.create(body)
        except TooManyTaps as exc:
            raise ApiError(429, str(exc)) from exc

    @router.get(TAPS_PATH + "/{tap_id}/events", responses={404: {"description": "no such tap"}})
    async def tap_events(
        _: Admin,
        tap_id: str,
        after: Annotated[int, Query(ge=0, description="the `next` of the previous answer")] = 0,
        wait_s: Annotated[
            float, Query(ge=0, le=MAX_WAIT_S, description="seconds to wait for an event")
        ] = 10.0,
    ) -> TapEvents:
        """Events after ``after`` (long-poll); ``done`` once the tap ended and all were read."""
        try:
            return await taps.events(tap_id, after=after, wait_s=wait_s)
        except UnknownTap as exc:
            raise ApiError(404, str(exc)) from exc

    @router.delete(
        TAPS_PATH + "/{tap_id}",
        status_code=204,
        response_class=Response,
        responses={404: {"description": "no such tap"}},
    )
    async def delete_tap(_: AdminAudited, tap_id: str) -> Response:
        """Stop a tap now (its buffered events stay readable for a minute)."""
        try:
            taps.delete(tap_id)
        except UnknownTap as exc:
            raise ApiError(404, str(exc)) from exc
        return Response(status_code=204)

    return router
