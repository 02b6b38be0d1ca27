"""One refresh of everything the dashboard shows (:class:`MeshState`) and how it is fetched.

:func:`fetch_state` reads the source once per refresh; the app hands the result down to the
views. Telemetry answering 404 (a controld without the telemetry API) is not an outage: the
other views still work and the traffic views say why they are empty.
:func:`proxy_events` turns two consecutive proxy lists into the control-plane events the
Events view shows (ACKs of new snapshots, NACKs, sidecars connecting and going away).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshcore.api.audit import AuditEntry
from meshcore.api.base import JsonObject
from meshcore.api.ca import CaStatus
from meshcore.api.proxies import Nack, ProxyState
from meshcore.api.telemetry import (
    Edge,
    EndpointStats,
    InstanceTelemetry,
    RouteStats,
    ServiceStats,
)
from tui.dashboard.source import DashboardSource, SourceRefused

__all__ = ["MeshState", "PlaneEvent", "fetch_state", "proxy_events"]


@dataclass(frozen=True, slots=True)
class PlaneEvent:
    """Something that happened in the control plane, as the dashboard saw it."""

    time: float
    kind: str
    subject: str
    detail: str


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


def _nack_key(nack: Nack | None) -> tuple[int, str] | None:
    return None if nack is None else (nack.version, nack.hash)


def proxy_events(
    before: Sequence[ProxyState], after: Sequence[ProxyState], now: float
) -> list[PlaneEvent]:
    """What changed between two ``GET /v1/proxies`` answers (empty ``before``: nothing, the
    first refresh is the baseline)."""
    if not before:
        return []
    old = {p.proxy_id: p for p in before}
    new = {p.proxy_id: p for p in after}
    events: list[PlaneEvent] = []
    for pid, proxy in sorted(new.items()):
        prev = old.get(pid)
        if prev is None:
            events.append(PlaneEvent(now, "registered", pid, f"service {proxy.service}"))
            continue
        if proxy.acked_version != prev.acked_version:
            events.append(PlaneEvent(now, "acked", pid, f"snapshot version {proxy.acked_version}"))
        nack = proxy.nack
        if nack is not None and _nack_key(nack) != _nack_key(prev.nack):
            first = nack.error.strip().splitlines()
            events.append(
                PlaneEvent(
                    now,
                    "NACKED",
                    pid,
                    f"version {nack.version}: {first[0] if first else '(no reason)'}",
                )
            )
        if proxy.connected != prev.connected:
            state = "connected" if proxy.connected else "disconnected"
            events.append(PlaneEvent(now, state, pid, ""))
    for pid in sorted(old.keys() - new.keys()):
        events.append(PlaneEvent(now, "gone", pid, "no longer registered"))
    return events
