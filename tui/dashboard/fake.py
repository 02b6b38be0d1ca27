""":class:`FakeSource`: a small in-memory mesh behind the :class:`DashboardSource` seam.

For unit, pilot and snapshot tests (and nothing else): a fixed clock, the demo's services
(loadgen -> web -> api v1/v2), its policy resources, a few control-plane events, and control
actions that change the resources and append audit entries and events the way controld does.
``unreachable = True`` makes every call fail like a stopped controld. Its state is kept as
the JSON controld sends (tests edit it); each answer is parsed into the :mod:`meshcore.api`
model, as :class:`HttpSource` does.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from meshcore.api.audit import AuditEntry
from meshcore.api.base import JsonObject
from meshcore.api.ca import CaStatus, RotateAnswer, RotationStep
from meshcore.api.events import ControlEvent, ControlEvents, Severity
from meshcore.api.proxies import DrainAnswer, ProxyState
from meshcore.api.resources import ApplyAnswer
from meshcore.api.telemetry import (
    Edge,
    EdgesTelemetry,
    EndpointStats,
    EndpointsTelemetry,
    InstancesTelemetry,
    InstanceTelemetry,
    RouteStats,
    RoutesTelemetry,
    ServiceStats,
    ServicesTelemetry,
    TapCreated,
    TapEvent,
    TapEvents,
    TapRequest,
)
from tui.dashboard.fakedata import DEMO_EVENTS, demo_resources, stats_row
from tui.dashboard.source import SourceRefused, SourceUnreachable

__all__ = ["FAKE_NOW", "FakeSource", "demo_resources"]

Json = dict[str, Any]

#: The fake's clock: 2026-01-01T00:00:00Z.
FAKE_NOW = 1767225600.0


class FakeSource:
    """An in-memory :class:`~tui.dashboard.source.DashboardSource` (see the module doc)."""

    def __init__(self) -> None:
        self.now = FAKE_NOW
        self.unreachable = False
        self.resources_: dict[tuple[str, str], Json] = {
            (r["kind"], r["metadata"]["name"]): r for r in demo_resources()
        }
        self.revision = 7
        self.audit_: list[Json] = []
        self.drained: list[str] = []
        self.rotations: list[str] = []
        self.ca_phase = "stable"
        self.taps: dict[str, list[TapEvent]] = {}
        self.calls: list[str] = []
        self.events_: list[ControlEvent] = []
        for ago, kind, subject, detail, severity in DEMO_EVENTS:
            self.add_event(kind, subject, detail, severity, at=self.now - ago)
        self.proxies_: list[Json] = [
            self._proxy("api-v1-sidecar", "api", 12, 12),
            self._proxy(
                "api-v2-sidecar", "api", 11, 12, nack="route canary: fault.headers unsupported"
            ),
            self._proxy("loadgen-sidecar", "loadgen", 12, 12),
            self._proxy("web-sidecar", "web", 12, 12),
        ]

    def _proxy(
        self, pid: str, service: str, acked: int, latest: int, nack: str | None = None
    ) -> Json:
        return {
            "proxy_id": pid,
            "service": service,
            "namespace": "default",
            "connected": True,
            "last_contact": self.now - 2,
            "acked_version": acked,
            "acked_hash": f"h{acked}",
            "latest_version": latest,
            "latest_hash": f"h{latest}",
            "nack": None
            if nack is None
            else {"version": latest, "hash": f"h{latest}", "error": nack, "time": self.now - 30},
            "features": ["routes", "splits"],
            "unsupported": []
            if nack is None
            else [{"feature": "fault.headers", "path": "routes[1]"}],
        }

    def add_event(
        self,
        kind: str,
        subject: str,
        detail: str = "",
        severity: Severity = "info",
        *,
        at: float | None = None,
    ) -> None:
        """Record a control-plane event (at the fake's clock unless ``at``)."""
        when = datetime.fromtimestamp(self.now if at is None else at, UTC)
        self.events_.append(
            ControlEvent(
                seq=len(self.events_) + 1,
                time=when.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                kind=kind,
                subject=subject,
                detail=detail,
                severity=severity,
            )
        )

    def _check(self, name: str) -> None:
        self.calls.append(name)
        if self.unreachable:
            raise SourceUnreachable("cannot reach controld at http://fake: connection refused")

    def _weights(self) -> tuple[int, int]:
        rule = self.resources_[("HTTPRoute", "api")]["spec"]["rules"][1]
        v1, v2 = (int(b["weight"]) for b in rule["backends"])
        return v1, v2

    # -- telemetry -------------------------------------------------------------------------------

    async def services(self, window_s: int) -> ServicesTelemetry:
        self._check("services")
        rows = [
            ServiceStats(service="api", **stats_row(5.0, 0.02, 4.0)),
            ServiceStats(service="web", **stats_row(5.0, 0.0, 9.0)),
        ]
        return ServicesTelemetry(generated_at=self.now, window_s=window_s, services=tuple(rows))

    async def routes(self, service: str, window_s: int) -> RoutesTelemetry:
        self._check("routes")
        rows = [RouteStats(service=service, route="canary", **stats_row(4.8, 0.02, 4.0))]
        rows.append(RouteStats(service=service, route="slow", **stats_row(0.2, 0.0, 2000.0)))
        return RoutesTelemetry(
            generated_at=self.now, window_s=window_s, service=service, routes=tuple(rows)
        )

    async def endpoints(self, service: str, window_s: int) -> EndpointsTelemetry:
        self._check("endpoints")
        v1, v2 = self._weights()
        total = 5.0
        rows = [
            EndpointStats(
                service=service,
                endpoint="127.0.0.1:15106",
                proxy_id="api-v1-sidecar",
                **stats_row(total * v1 / (v1 + v2), 0.0, 4.0),
            ),
            EndpointStats(
                service=service,
                endpoint="127.0.0.1:15206",
                proxy_id="api-v2-sidecar",
                **stats_row(total * v2 / (v1 + v2), 0.1, 5.0),
            ),
        ]
        return EndpointsTelemetry(
            generated_at=self.now, window_s=window_s, service=service, endpoints=tuple(rows)
        )

    async def edges(self, window_s: int) -> EdgesTelemetry:
        self._check("edges")
        edges = (
            Edge(
                source="loadgen",
                destination="web",
                protocol="http",
                rps=5.0,
                error_rate=0.0,
                mtls=True,
            ),
            Edge(
                source="web",
                destination="api",
                protocol="http",
                rps=5.0,
                error_rate=0.02,
                mtls=True,
            ),
            Edge(
                source="web",
                destination="db",
                protocol="tcp",
                rps=0.5,
                mtls=False,
                bytes_per_s=2048,
            ),
        )
        return EdgesTelemetry(generated_at=self.now, window_s=window_s, edges=edges)

    async def instances(self, window_s: int) -> InstancesTelemetry:
        self._check("instances")
        rows = tuple(
            InstanceTelemetry(
                proxy_id=p["proxy_id"],
                service=p["service"],
                snapshot_version=p["acked_version"],
                last_contact=self.now - 1,
                cert_not_after=self.now + 20 * 3600,
                ejected_endpoints=("api/127.0.0.1:15206",) if p["service"] == "web" else (),
                ejections=1 if p["service"] == "web" else 0,
            )
            for p in self.proxies_
        )
        return InstancesTelemetry(generated_at=self.now, window_s=window_s, instances=rows)

    # -- control plane -------------------------------------------------------------------------

    async def resources(self) -> list[JsonObject]:
        self._check("resources")
        return [copy.deepcopy(r) for _, r in sorted(self.resources_.items())]

    async def proxies(self) -> list[ProxyState]:
        self._check("proxies")
        return [ProxyState.model_validate(p) for p in self.proxies_]

    async def audit(self, limit: int) -> list[AuditEntry]:
        self._check("audit")
        return [AuditEntry.model_validate(e) for e in self.audit_[::-1][:limit]]

    def _roots(self) -> list[str]:
        """The bundle: root-1, plus root-2 while a rotation is under way."""
        return ["root-1"] if self.ca_phase == "stable" else ["root-1", "root-2"]

    def _active(self) -> str:
        return "root-2" if self.ca_phase == "active" else "root-1"

    async def ca_status(self) -> CaStatus:
        self._check("ca")
        roots = self._roots()
        active = self._active()
        return CaStatus.model_validate(
            {
                "phase": self.ca_phase,
                "active": active,
                "bundle": roots,
                "index": len(self.rotations) + 1,
                "trust_domain": "demo.mesh.local",
                "leaf_ttl_s": 86400.0,
                "roots": [
                    {
                        "id": root,
                        "active": root == active,
                        "subject": f"CN={root}",
                        "not_after": "2036-01-01T00:00:00Z",
                        "outstanding": {"count": 4 if root == active else 0},
                    }
                    for root in roots
                ],
            }
        )

    async def events(self, after: int, wait_s: float, limit: int) -> ControlEvents:
        self._check("events")
        # A long-poll: look for news every 50 ms up to wait_s (bounded; a test adds events).
        for _ in range(int(wait_s / 0.05)):
            if len(self.events_) > after:
                break
            await asyncio.sleep(0.05)
            self._check("events")
        fresh = tuple(self.events_[after : after + limit])
        return ControlEvents(events=fresh, next=fresh[-1].seq if fresh else after)

    def _record(self, method: str, route: str, resource: str, outcome: str) -> None:
        self.audit_.append(
            {
                "time": "2026-01-01T00:00:00Z",
                "actor": "admin",
                "method": method,
                "route": route,
                "path": route,
                "source": "127.0.0.1",
                "status": 200,
                "outcome": outcome,
                "resource": resource,
                "revision": self.revision,
                "details": {},
            }
        )

    async def start_tap(self, request: TapRequest) -> TapCreated:
        self._check("start_tap")
        tap_id = f"tap-{len(self.taps) + 1}"
        self.taps[tap_id] = [
            TapEvent(
                ts=self.now + i,
                source="web",
                destination="api",
                route="canary",
                endpoint="127.0.0.1:15106",
                method="GET",
                path=f"/api/items/{i}",
                status=200 if i % 3 else 503,
                latency_ms=3.5 + i,
                identity="spiffe://demo.mesh.local/ns/default/svc/web",
                trace_id=f"{i:032x}",
            )
            for i in range(3)
        ]
        return TapCreated(id=tap_id, expires_at=self.now + request.duration_s)

    async def tap_events(self, tap_id: str, after: int, wait_s: float) -> TapEvents:
        self._check("tap_events")
        events = self.taps.get(tap_id)
        if events is None:
            raise SourceRefused(404, "unknown tap")
        return TapEvents(events=tuple(events[after:]), next=len(events), done=False)

    async def stop_tap(self, tap_id: str) -> None:
        self._check("stop_tap")
        self.taps.pop(tap_id, None)

    async def get_resource(self, kind: str, name: str) -> JsonObject:
        self._check("get_resource")
        found = self.resources_.get((kind, name))
        if found is None:
            raise SourceRefused(404, f"{kind}/{name} not found")
        return copy.deepcopy(found)

    async def apply(self, resource: Mapping[str, Any]) -> ApplyAnswer:
        self._check("apply")
        key = (str(resource["kind"]), str(resource["metadata"]["name"]))
        self.revision += 1
        self.resources_[key] = copy.deepcopy(dict(resource))
        self._record("PUT", "/v1/resources", f"{key[0]}/{key[1]}", "applied")
        self.add_event("resource.updated", f"{key[0]}/{key[1]}", "by admin")
        change = {"kind": key[0], "name": key[1], "action": "updated"}
        answer = {"revision": self.revision, "changes": [change], "dry_run": False}
        return ApplyAnswer.model_validate(answer)

    async def drain(self, proxy_id: str) -> DrainAnswer:
        self._check("drain")
        if proxy_id not in {p["proxy_id"] for p in self.proxies_}:
            raise SourceRefused(404, "unknown proxy")
        self.drained.append(proxy_id)
        self._record("POST", "/v1/proxies/{proxy_id}/drain", proxy_id, "drain_requested")
        self.add_event("sidecar.drain_requested", proxy_id, severity="warning")
        return DrainAnswer(proxy_id=proxy_id, drain_requested=self.now)

    async def ca_rotate(self, step: RotationStep) -> RotateAnswer:
        self._check("ca_rotate")
        self.rotations.append(step)
        self.ca_phase = {"stage": "staged", "activate": "active", "retire": "stable"}[step]
        self._record("POST", "/v1/ca/rotate", "ca", step)
        self.add_event("ca.rotation", step, f"phase {self.ca_phase}, signer {self._active()}")
        return RotateAnswer(
            phase=self.ca_phase,
            active=self._active(),
            bundle=tuple(self._roots()),
            index=len(self.rotations) + 1,
        )

    async def aclose(self) -> None:
        self.calls.append("aclose")
