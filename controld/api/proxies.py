"""Sidecar endpoints: registration, the snapshot long-poll (the hot path), NACK, proxy list.

``GET /v1/snapshots/{proxy_id}`` is served by a plain Starlette route (:func:`poll_route`)
placed before every FastAPI route: with 1000 sidecars polling it, FastAPI's dependency
resolution and parameter validation would cost several times the whole plain request
(in-process, per request: ~50 us plain, ~150 us as a FastAPI route with ``Depends``/``Query``).
A FastAPI twin of the route, never reached, documents it in OpenAPI.

A poll whose client went away stays parked until its ``wait`` ends (meshd asks for 30 s)
and its answer is dropped: watching for the disconnect takes a task per poll, which costs
more than the whole plain request (~80 us for nursery + task + cancel on this machine).
"""

# No `from __future__ import annotations`: FastAPI evaluates route signatures, whose
# Annotated aliases are local to the router factories.

import math
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response, Security
from starlette.requests import Request
from starlette.routing import Route

from controld.api.deps import BEARER, Guard
from controld.api.errors import ApiError, error_response
from controld.api.peer import authenticate_plain
from controld.api.plane import ControlPlane, PushHubAPI
from controld.auth import Principal, TokenAuth
from controld.push import MAX_WAIT_S, UnknownProxy
from meshcore.api.proxies import PROXIES_PATH, DrainAnswer, ProxyList, ProxyState
from meshcore.api.sidecar import (
    DEFAULT_WAIT_S,
    DRAIN_HEADER,
    DRAIN_VALUE,
    FEATURES_HEADER,
    HASH_PARAM,
    MAX_NACK_ERROR,
    NACK_ROUTE,
    PROXY_ROUTE,
    SNAPSHOT_ROUTE,
    VERSION_PARAM,
    WAIT_PARAM,
    NackRequest,
    Registered,
    SnapshotAnswer,
)
from meshcore.model.proxy import ProxyDescriptor

__all__ = ["DRAIN_HEADER", "MAX_WAIT_S", "poll_route", "proxies_router"]


def _scope_error(principal: Principal, hub: PushHubAPI, proxy_id: str) -> Response | None:
    """An error answer unless ``principal`` may act for ``proxy_id`` (None: go ahead).

    A sidecar token may only use proxies registered with its own service; an unregistered
    id is a 404 either way (the sidecar registers and polls again).
    """
    if principal.kind == "admin":
        return None
    descriptor = hub.descriptor(proxy_id)
    if descriptor is None:
        return error_response(404, "unknown proxy")
    if descriptor.service != principal.service:
        return error_response(
            403, f"{principal.name} may not act for service {descriptor.service!r}"
        )
    return None


def _bad_query(name: str, message: str) -> Response:
    return error_response(422, "invalid request", [{"path": f"query.{name}", "message": message}])


def poll_route(plane: ControlPlane, auth: TokenAuth) -> Route:
    """The plain Starlette route of ``GET /v1/snapshots/{proxy_id}`` (see the module doc)."""

    async def poll_snapshot(request: Request) -> Response:
        principal = await authenticate_plain(auth, request)
        if isinstance(principal, Response):
            return principal
        proxy_id: str = request.path_params["proxy_id"]
        hub = plane.hub
        denied = _scope_error(principal, hub, proxy_id)
        if denied is not None:
            return denied
        query = request.query_params
        raw = query.get(VERSION_PARAM)
        version: int | None = None
        if raw:
            try:
                version = int(raw)
            except ValueError:
                return _bad_query(VERSION_PARAM, "must be an integer")
        hash_ = query.get(HASH_PARAM) or None
        raw = query.get(WAIT_PARAM)
        wait = DEFAULT_WAIT_S
        if raw:
            try:
                wait = float(raw)
            except ValueError:
                return _bad_query(WAIT_PARAM, "must be a number of seconds")
            if math.isnan(wait):
                return _bad_query(WAIT_PARAM, "must be a number of seconds")
            wait = min(MAX_WAIT_S, max(0.0, wait))
        try:
            envelope = await hub.poll(
                proxy_id,
                version=version,
                hash=hash_,
                wait=wait,
                features=request.headers.get(FEATURES_HEADER),
            )
        except UnknownProxy:
            return error_response(404, "unknown proxy")
        headers = {DRAIN_HEADER: DRAIN_VALUE} if hub.take_drain(proxy_id) else None
        if envelope is None:
            return Response(status_code=304, headers=headers)
        return Response(envelope.body, media_type="application/json", headers=headers)

    return Route(SNAPSHOT_ROUTE, poll_snapshot, methods=["GET"], name="poll_snapshot")


def proxies_router(plane: ControlPlane, guard: Guard) -> APIRouter:
    """Registration, NACK, the proxy list and the OpenAPI twin of the long-poll."""
    router = APIRouter(tags=["proxies"], dependencies=[Security(BEARER)])
    AnyToken = Annotated[Principal, Depends(guard.principal)]
    Admin = Annotated[Principal, Depends(guard.admin)]
    AdminAudited = Annotated[Principal, Depends(guard.admin_audited)]

    @router.post(PROXY_ROUTE, responses={403: {"description": "wrong service"}})
    async def register_proxy(
        proxy_id: str, descriptor: ProxyDescriptor, principal: AnyToken, request: Request
    ) -> Registered:
        """Register (or refresh) a sidecar's descriptor; its snapshot gets compiled.

        A sidecar declares the snapshot features it enforces in the ``x-meshd-features``
        header (comma-separated) of this call and of its polls; without it, they are unknown.
        """
        if descriptor.proxy_id != proxy_id:
            raise ApiError(
                422,
                "invalid request",
                [{"path": "body.proxy_id", "message": "must equal the proxy id in the path"}],
            )
        principal.require_service(descriptor.service)
        hub = plane.hub
        existing = hub.descriptor(proxy_id)
        if existing is not None:
            # A sidecar may not take over another service's proxy id.
            principal.require_service(existing.service)
        hub.register(descriptor, features=request.headers.get(FEATURES_HEADER))
        return Registered(proxy_id=proxy_id)

    @router.get(
        SNAPSHOT_ROUTE,
        response_class=Response,
        responses={
            200: {"model": SnapshotAnswer, "description": "a snapshot newer than `hash`"},
            304: {"description": "nothing newer within `wait` seconds (no body)"},
            404: {"description": "unknown proxy: register it and poll again"},
        },
    )
    async def poll_snapshot_doc(
        proxy_id: str,
        _: AnyToken,
        version: Annotated[int | None, Query(description="version the sidecar runs")] = None,
        hash: Annotated[str | None, Query(description="hash of the snapshot it runs")] = None,
        wait: Annotated[
            float, Query(ge=0, description=f"seconds to wait for news (at most {MAX_WAIT_S:g})")
        ] = DEFAULT_WAIT_S,
        x_meshd_features: Annotated[
            str | None,
            Header(description="features the sidecar enforces, comma-separated (none: unknown)"),
        ] = None,
    ) -> Response:
        """Long-poll for the proxy's snapshot; the call ACKs ``version``/``hash``.

        Served by a plain route placed before this one (see :func:`poll_route`).
        """
        raise ApiError(500, "the plain long-poll route should have answered")

    @router.post(
        NACK_ROUTE,
        status_code=204,
        response_class=Response,
        responses={404: {"description": "unknown proxy"}},
    )
    async def nack_snapshot(proxy_id: str, body: NackRequest, principal: AnyToken) -> Response:
        """Report that the sidecar rejected a snapshot (it keeps running the previous one)."""
        hub = plane.hub
        denied = _scope_error(principal, hub, proxy_id)
        if denied is not None:
            return denied
        try:
            hub.nack(
                proxy_id, version=body.version, hash=body.hash, error=body.error[:MAX_NACK_ERROR]
            )
        except UnknownProxy as exc:
            raise ApiError(404, "unknown proxy") from exc
        return Response(status_code=204)

    @router.get(PROXIES_PATH)
    async def list_proxies(_: Admin) -> ProxyList:
        """Every registered sidecar: connection, ACKed and latest versions, last NACK, and
        ``drain_requested`` (when an operator asked it to drain, else null)."""
        hub = plane.hub
        return ProxyList(
            proxies=tuple(
                ProxyState.model_validate(
                    {**row, "drain_requested": hub.drain_requested(str(row["proxy_id"]))}
                )
                for row in hub.proxies()
            )
        )

    @router.post(
        PROXIES_PATH + "/{proxy_id}/drain",
        status_code=202,
        responses={404: {"description": "unknown proxy"}},
    )
    async def drain_proxy(proxy_id: str, _: AdminAudited) -> DrainAnswer:
        """Ask a sidecar to drain (admin; audited): its long-poll answers at once with an
        ``x-meshd-drain: 1`` header, and the sidecar drains as on SIGTERM (leaves the
        registry, keeps serving for its drain delay, finishes in-flight requests, exits)."""
        try:
            asked = plane.hub.request_drain(proxy_id)
        except UnknownProxy as exc:
            raise ApiError(404, "unknown proxy") from exc
        return DrainAnswer(proxy_id=proxy_id, drain_requested=asked)

    return router
