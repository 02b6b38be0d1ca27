""":class:`HttpSource`: the dashboard's data from controld's API (async httpx, admin token)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from meshcore.api.events import EVENTS_PATH, ControlEvents
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

Json = dict[str, Any]
M = TypeVar("M", bound=BaseModel)


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip().splitlines()[0][:200] if response.text.strip() else "error"
    if isinstance(body, dict):
        error = body.get("error", body.get("detail"))
        if error is not None:
            return str(error)
    return response.reason_phrase or "error"


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
            message = _message(response)
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
            raise SourceRefused(response.status_code, "answer is not JSON") from exc

    async def _model(
        self,
        model: type[M],
        path: str,
        params: Mapping[str, str | int | float],
        timeout_s: float | None = None,
    ) -> M:
        body = await self._call("GET", path, params=params, timeout_s=timeout_s)
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            raise SourceRefused(200, f"{path}: unexpected answer: {exc.errors()[0]}") from exc

    async def services(self, window_s: int) -> ServicesTelemetry:
        return await self._model(ServicesTelemetry, SERVICES_PATH, {"window_s": window_s})

    async def routes(self, service: str, window_s: int) -> RoutesTelemetry:
        params: dict[str, str | int | float] = {"service": service, "window_s": window_s}
        return await self._model(RoutesTelemetry, ROUTES_PATH, params)

    async def endpoints(self, service: str, window_s: int) -> EndpointsTelemetry:
        params: dict[str, str | int | float] = {"service": service, "window_s": window_s}
        return await self._model(EndpointsTelemetry, ENDPOINTS_PATH, params)

    async def edges(self, window_s: int) -> EdgesTelemetry:
        return await self._model(EdgesTelemetry, EDGES_PATH, {"window_s": window_s})

    async def instances(self, window_s: int) -> InstancesTelemetry:
        return await self._model(InstancesTelemetry, INSTANCES_PATH, {"window_s": window_s})

    async def _list(
        self, path: str, key: str, params: Mapping[str, str | int] | None = None
    ) -> list[Json]:
        body = await self._call("GET", path, params=params)
        items = body.get(key) if isinstance(body, dict) else None
        return [item for item in items or () if isinstance(item, dict)]

    async def resources(self) -> list[Json]:
        return await self._list("/v1/resources", "resources")

    async def proxies(self) -> list[Json]:
        return await self._list("/v1/proxies", "proxies")

    async def audit(self, limit: int) -> list[Json]:
        return await self._list("/v1/audit", "entries", {"limit": limit})

    async def ca_status(self) -> Json:
        body = await self._call("GET", "/v1/ca")
        return body if isinstance(body, dict) else {}

    async def events(self, after: int, wait_s: float, limit: int) -> ControlEvents:
        params: dict[str, str | int | float] = {"after": after, "wait_s": wait_s, "limit": limit}
        return await self._model(ControlEvents, EVENTS_PATH, params, timeout_s=wait_s + 5.0)

    async def start_tap(self, request: TapRequest) -> TapCreated:
        body = await self._call("POST", TAPS_PATH, json=request.model_dump(mode="json"))
        return TapCreated.model_validate(body)

    async def tap_events(self, tap_id: str, after: int, wait_s: float) -> TapEvents:
        body = await self._call(
            "GET",
            tap_events_path(tap_id),
            params={"after": after, "wait_s": wait_s},
            timeout_s=wait_s + 5.0,
        )
        return TapEvents.model_validate(body)

    async def stop_tap(self, tap_id: str) -> None:
        await self._call("DELETE", tap_path(tap_id))

    async def get_resource(self, kind: str, name: str) -> Json:
        body = await self._call("GET", f"/v1/resources/{kind}/{name}")
        return body if isinstance(body, dict) else {}

    async def apply(self, resource: Mapping[str, Any]) -> Json:
        body = await self._call("PUT", "/v1/resources", json={"resources": [dict(resource)]})
        return body if isinstance(body, dict) else {}

    async def drain(self, proxy_id: str) -> Json:
        body = await self._call("POST", f"/v1/proxies/{proxy_id}/drain")
        return body if isinstance(body, dict) else {}

    async def ca_rotate(self, step: str) -> Json:
        body = await self._call("POST", "/v1/ca/rotate", json={"step": step})
        return body if isinstance(body, dict) else {}

    async def aclose(self) -> None:
        await self._http.aclose()
