"""Where the dashboard's data comes from: the :class:`DashboardSource` seam and its errors.

The real source is :class:`~tui.dashboard.http.HttpSource` (controld's API with the
operator's token); tests fill the seam with :class:`~tui.dashboard.fake.FakeSource`.
Telemetry and taps come as :mod:`meshcore.api.telemetry` models, control-plane events as
:mod:`meshcore.api.events` models; the older endpoints
(resources, proxies, audit, CA) as the JSON mappings controld answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from meshcore.api.events import ControlEvents
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

Json = dict[str, Any]


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

    async def resources(self) -> list[Json]:
        """The policy resources (``GET /v1/resources``)."""
        ...

    async def proxies(self) -> list[Json]:
        """The sidecars' push state (``GET /v1/proxies``): ACKs, NACKs, features."""
        ...

    async def audit(self, limit: int) -> list[Json]:
        """The newest audit entries first (``GET /v1/audit``)."""
        ...

    async def ca_status(self) -> Json:
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

    async def get_resource(self, kind: str, name: str) -> Json:
        """One resource as stored now (read right before an edit)."""
        ...

    async def apply(self, resource: Mapping[str, Any]) -> Json:
        """``PUT /v1/resources`` with one resource; the answer (revision, changes)."""
        ...

    async def drain(self, proxy_id: str) -> Json:
        """Ask a sidecar to drain (``POST /v1/proxies/{id}/drain``)."""
        ...

    async def ca_rotate(self, step: str) -> Json:
        """One CA root rotation step (``stage``, ``activate``, ``retire``)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
