"""One refresh of everything the dashboard shows (:class:`MeshState`) and how it is fetched.

:func:`fetch_state` reads the source once per refresh; the app hands the result down to the
views. Telemetry answering 404 (a controld without the telemetry API) is not an outage: the
other views still work and the traffic views say why they are empty.
:class:`PlaneEvent` is one row of the Events view: a control-plane event controld recorded
(:func:`plane_event` of a :class:`~meshcore.api.events.ControlEvent`, streamed from
``GET /v1/events``) or the result of one of the dashboard's own actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from meshcore.api.audit import AuditEntry
from meshcore.api.base import JsonObject
from meshcore.api.ca import CaStatus
from meshcore.api.events import ControlEvent, Severity
from meshcore.api.proxies import ProxyState
from meshcore.api.telemetry import (
    Edge,
    EndpointStats,
    InstanceTelemetry,
    RouteStats,
    ServiceStats,
)
from tui.dashboard.source import DashboardSource, SourceRefused

__all__ = ["MeshState", "PlaneEvent", "fetch_state", "plane_event"]


@dataclass(frozen=True, slots=True)
class PlaneEvent:
    """One row of the Events view: a control-plane event or a dashboard action's result."""

    time: float
    kind: str
    subject: str
    detail: str
    severity: Severity = "info"


def plane_event(event: ControlEvent) -> PlaneEvent:
    """A row for an event controld recorded (its RFC 3339 time as Unix seconds; an
    unreadable one as 0, shown as midnight rather than dropping the event)."""
    try:
        when = datetime.fromisoformat(event.time.replace("Z", "+00:00")).timestamp()
    except ValueError:
        when = 0.0
    return PlaneEvent(when, event.kind, event.subject, event.detail, event.severity)


@dataclass(frozen=True)
class MeshState:
    """Everything one refresh read (immutable; a refresh makes a new one)."""

    fetched_at: float
    services: tuple[ServiceStats, ...] = ()
    #: Routes and endpoints of the service the Traffic view drilled into (else empty).
    routes: tuple[RouteStats, ...] = ()
    endpoints: tuple[EndpointStats, ...] = ()
    edges: tuple[Edge, ...] = ()
    instances: tuple[InstanceTelemetry, ...] = ()
    proxies: tuple[ProxyState, ...] = ()
    #: The policy resource documents (what the control actions edit).
    resources: tuple[JsonObject, ...] = ()
    audit: tuple[AuditEntry, ...] = ()
    #: None: the CA state is unavailable (see ``notes``).
    ca: CaStatus | None = None
    #: Why telemetry is missing (controld without the telemetry API), else None.
    telemetry_error: str | None = None
    #: Why the audit log or the CA state is missing (e.g. not enabled), else None.
    notes: tuple[str, ...] = ()


async def fetch_state(
    source: DashboardSource, *, now: float, drill: str | None, window_s: int, audit_limit: int = 50
) -> MeshState:
    """Read one :class:`MeshState`; :class:`~tui.dashboard.source.SourceUnreachable` passes
    through (the app keeps the last state, marked stale)."""
    telemetry_error = None
    services: tuple[ServiceStats, ...] = ()
    routes: tuple[RouteStats, ...] = ()
    endpoints: tuple[EndpointStats, ...] = ()
    edges: tuple[Edge, ...] = ()
    instances: tuple[InstanceTelemetry, ...] = ()
    try:
        services = (await source.services(window_s)).services
        edges = (await source.edges(window_s)).edges
        instances = (await source.instances(window_s)).instances
        if drill is not None:
            routes = (await source.routes(drill, window_s)).routes
            endpoints = (await source.endpoints(drill, window_s)).endpoints
    except SourceRefused as exc:
        telemetry_error = f"telemetry unavailable: {exc.message} ({exc.status})"
    proxies = tuple(await source.proxies())
    resources = tuple(await source.resources())
    notes: list[str] = []
    audit: tuple[AuditEntry, ...] = ()
    try:
        audit = tuple(await source.audit(audit_limit))
    except SourceRefused as exc:
        notes.append(f"audit log unavailable: {exc.message}")
    ca: CaStatus | None = None
    try:
        ca = await source.ca_status()
    except SourceRefused as exc:
        notes.append(f"CA unavailable: {exc.message}")
    return MeshState(
        fetched_at=now,
        services=services,
        routes=routes,
        endpoints=endpoints,
        edges=edges,
        instances=instances,
        proxies=proxies,
        resources=resources,
        audit=audit,
        ca=ca,
        telemetry_error=telemetry_error,
        notes=tuple(notes),
    )
