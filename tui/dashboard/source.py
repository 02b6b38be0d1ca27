"""Where the dashboard's data comes from: the :class:`DashboardSource` seam and its errors.

The real source is :class:`~tui.dashboard.http.HttpSource` (controld's API with the
operator's token); tests fill the seam with :class:`~tui.dashboard.fake.FakeSource`.
Answers come as the wire models of :mod:`meshcore.api` (control-plane events as
:mod:`meshcore.api.events` models, policy resources as the JSON documents controld stores,
which the control actions edit); an answer without the promised shape is a
:class:`SourceRefused` naming the route and the first bad field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from meshcore.api.audit import AuditEntry
from meshcore.api.base import JsonObject
from meshcore.api.ca import CaStatus, RotateAnswer, RotationStep
from meshcore.api.events import ControlEvents
from meshcore.api.proxies import DrainAnswer, ProxyState
from meshcore.api.resources import ApplyAnswer
from meshcore.api.telemetry import (
    EdgesTelemetry,
    EndpointsTelemetry,
    InstancesTelemetry,
    RoutesTelemetry,
    ServicesTelemetry,
    TapCreated,
    TapEvents,
    TapRequest,
)

__all__ = ["DashboardSource", "SourceError", "SourceRefused", "SourceUnreachable"]


class SourceError(Exception):
    """Root of the errors a :class:`DashboardSource` raises."""


class SourceUnreachable(SourceError):
    """No answer from controld (refused, timed out, ...): show the last data as stale."""


class SourceRefused(SourceError):
    """controld answered with an error status (``status``, its ``message``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class DashboardSource(Protocol):
    """What the dashboard reads and changes; every method may raise :class:`SourceError`."""

    async def services(self, window_s: int) -> ServicesTelemetry:
        """Per destination service traffic."""
        ...

    async def routes(self, service: str, window_s: int) -> RoutesTelemetry:
        """Per route traffic of ``service``."""
        ...

    async def endpoints(self, service: str, window_s: int) -> EndpointsTelemetry:
        """Per endpoint traffic of ``service``."""
        ...

    async def edges(self, window_s: int) -> EdgesTelemetry:
        """The service graph."""
        ...

    async def instances(self, window_s: int) -> InstancesTelemetry:
        """What each sidecar reported."""
        ...

    async def resources(self) -> list[JsonObject]:
        """The policy resources (``GET /v1/resources``)."""
        ...

    async def proxies(self) -> list[ProxyState]:
        """The sidecars' push state (``GET /v1/proxies``): ACKs, NACKs, features."""
        ...

    async def audit(self, limit: int) -> list[AuditEntry]:
        """The newest audit entries first (``GET /v1/audit``)."""
        ...

    async def ca_status(self) -> CaStatus:
        """The CA's rotation phase (``GET /v1/ca``)."""
        ...

    async def events(self, after: int, wait_s: float, limit: int) -> ControlEvents:
        """Control-plane events numbered after ``after`` (``GET /v1/events``, a long-poll:
        waits up to ``wait_s`` when there is none yet)."""
        ...

    async def start_tap(self, request: TapRequest) -> TapCreated:
        """Start a tap."""
        ...

    async def tap_events(self, tap_id: str, after: int, wait_s: float) -> TapEvents:
        """The tap's events numbered after ``after`` (waits up to ``wait_s`` for some)."""
        ...

    async def stop_tap(self, tap_id: str) -> None:
        """Stop a tap."""
        ...

    async def get_resource(self, kind: str, name: str) -> JsonObject:
        """One resource as stored now (read right before an edit)."""
        ...

    async def apply(self, resource: Mapping[str, Any]) -> ApplyAnswer:
        """``PUT /v1/resources`` with one resource; the answer (revision, changes)."""
        ...

    async def drain(self, proxy_id: str) -> DrainAnswer:
        """Ask a sidecar to drain (``POST /v1/proxies/{id}/drain``)."""
        ...

    async def ca_rotate(self, step: RotationStep) -> RotateAnswer:
        """One CA root rotation step (``stage``, ``activate``, ``retire``)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
