""":class:`HttpSource`: the dashboard's data from controld's API (async httpx, admin token)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from meshcore.api.audit import AUDIT_PATH, AuditEntry, AuditPage
from meshcore.api.base import JsonObject, request_body
from meshcore.api.ca import (
    CA_PATH,
    CA_ROTATE_PATH,
    CaStatus,
    RotateAnswer,
    RotateRequest,
    RotationStep,
)
from meshcore.api.errors import UnexpectedAnswer, error_of, parse_answer, parse_object
from meshcore.api.events import EVENTS_PATH, ControlEvents
from meshcore.api.proxies import PROXIES_PATH, DrainAnswer, ProxyList, ProxyState, drain_path
from meshcore.api.resources import (
    RESOURCES_PATH,
    ApplyAnswer,
    ApplyRequest,
    ResourceList,
    resource_path,
)
from meshcore.api.telemetry import (
    EDGES_PATH,
    ENDPOINTS_PATH,
    INSTANCES_PATH,
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
    tap_events_path,
    tap_path,
)
from tui.dashboard.source import SourceRefused, SourceUnreachable

__all__ = ["HttpSource"]

M = TypeVar("M", bound=BaseModel)


class HttpSource:
    """A :class:`~tui.dashboard.source.DashboardSource` over controld's HTTP API.

    ``transport`` lets tests route the calls to an ASGI app in-process.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Accept": "application/json", "User-Agent": "meshctl-dashboard"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 3.0)),
            transport=transport,
            trust_env=False,
        )

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | float] | None = None,
        json: Any = None,
        timeout_s: float | None = None,
    ) -> Any:
        extra: dict[str, Any] = {}
        if timeout_s is not None:
            extra["timeout"] = httpx.Timeout(timeout_s, connect=3.0)
        try:
            response = await self._http.request(method, path, params=params, json=json, **extra)
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise SourceUnreachable(f"cannot reach controld at {self.base_url}: {reason}") from exc
        if response.status_code >= 400:
            message = error_of(response.content, response.reason_phrase).error
            if response.status_code in (401, 403):
                message += (
                    " (the dashboard needs an admin token: --token, --token-file or MESHCTL_TOKEN)"
                )
            raise SourceRefused(response.status_code, message)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            detail = str(UnexpectedAnswer(path, "not JSON"))
            raise SourceRefused(response.status_code, detail) from exc

    async def _model(
        self,
        model: type[M],
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | float] | None = None,
        json: Any = None,
        timeout_s: float | None = None,
    ) -> M:
        """One call whose answer is a ``model``; an answer of another shape is refused."""
        body = await self._call(method, path, params=params, json=json, timeout_s=timeout_s)
        try:
            return parse_answer(model, path, body)
        except UnexpectedAnswer as exc:
            raise SourceRefused(200, str(exc)) from exc

    async def _get(self, model: type[M], path: str, params: Mapping[str, str | int | float]) -> M:
        return await self._model(model, "GET", path, params=params)

    async def services(self, window_s: int) -> ServicesTelemetry:
        return await self._get(ServicesTelemetry, SERVICES_PATH, {"window_s": window_s})

    async def routes(self, service: str, window_s: int) -> RoutesTelemetry:
        params: dict[str, str | int | float] = {"service": service, "window_s": window_s}
        return await self._get(RoutesTelemetry, ROUTES_PATH, params)

    async def endpoints(self, service: str, window_s: int) -> EndpointsTelemetry:
        params: dict[str, str | int | float] = {"service": service, "window_s": window_s}
        return await self._get(EndpointsTelemetry, ENDPOINTS_PATH, params)

    async def edges(self, window_s: int) -> EdgesTelemetry:
        return await self._get(EdgesTelemetry, EDGES_PATH, {"window_s": window_s})

    async def instances(self, window_s: int) -> InstancesTelemetry:
        return await self._get(InstancesTelemetry, INSTANCES_PATH, {"window_s": window_s})

    async def resources(self) -> list[JsonObject]:
        return list((await self._get(ResourceList, RESOURCES_PATH, {})).resources)

    async def proxies(self) -> list[ProxyState]:
        return list((await self._get(ProxyList, PROXIES_PATH, {})).proxies)

    async def audit(self, limit: int) -> list[AuditEntry]:
        return list((await self._get(AuditPage, AUDIT_PATH, {"limit": limit})).entries)

    async def ca_status(self) -> CaStatus:
        return await self._get(CaStatus, CA_PATH, {})

    async def events(self, after: int, wait_s: float, limit: int) -> ControlEvents:
        params: dict[str, str | int | float] = {"after": after, "wait_s": wait_s, "limit": limit}
        return await self._model(
            ControlEvents, "GET", EVENTS_PATH, params=params, timeout_s=wait_s + 5.0
        )

    async def start_tap(self, request: TapRequest) -> TapCreated:
        body = request.model_dump(mode="json")
        return await self._model(TapCreated, "POST", TAPS_PATH, json=body)

    async def tap_events(self, tap_id: str, after: int, wait_s: float) -> TapEvents:
        return await self._model(
            TapEvents,
            "GET",
            tap_events_path(tap_id),
            params={"after": after, "wait_s": wait_s},
            timeout_s=wait_s + 5.0,
        )

    async def stop_tap(self, tap_id: str) -> None:
        await self._call("DELETE", tap_path(tap_id))

    async def get_resource(self, kind: str, name: str) -> JsonObject:
        path = resource_path(kind, name)
        try:
            return parse_object(path, await self._call("GET", path))
        except UnexpectedAnswer as exc:
            raise SourceRefused(200, str(exc)) from exc

    async def apply(self, resource: Mapping[str, Any]) -> ApplyAnswer:
        body = request_body(ApplyRequest, resources=[dict(resource)])
        return await self._model(ApplyAnswer, "PUT", RESOURCES_PATH, json=body)

    async def drain(self, proxy_id: str) -> DrainAnswer:
        return await self._model(DrainAnswer, "POST", drain_path(proxy_id))

    async def ca_rotate(self, step: RotationStep) -> RotateAnswer:
        body = request_body(RotateRequest, step=step)
        return await self._model(RotateAnswer, "POST", CA_ROTATE_PATH, json=body)

    async def aclose(self) -> None:
        await self._http.aclose()
