"""The fixed data of :class:`~tui.dashboard.fake.FakeSource`: the demo's policy resources, its
first control-plane events and the shape of a telemetry row."""

from __future__ import annotations

from typing import Any

from meshcore.api.events import Severity

__all__ = ["DEMO_EVENTS", "demo_resources", "stats_row"]

Json = dict[str, Any]


def demo_resources() -> list[Json]:
    """The demo's policy, as ``GET /v1/resources`` lists it."""
    return [
        {
            "apiVersion": "meshd.io/v1",
            "kind": "AccessPolicy",
            "metadata": {"name": "api-callers"},
            "spec": {
                "destination": "api",
                "rules": [
                    {
                        "sources": ["web"],
                        "action": "allow",
                        "permissions": [{"path": {"prefix": "/api/"}, "methods": ["GET"]}],
                    }
                ],
            },
        },
        {
            "apiVersion": "meshd.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "api"},
            "spec": {
                "service": "api",
                "rules": [
                    {"name": "slow", "match": {"path": {"prefix": "/api/slow"}}, "timeout_s": 2},
                    {
                        "name": "canary",
                        "match": {"path": {"prefix": "/api/"}},
                        "backends": [
                            {"subset": "v1", "weight": 90},
                            {"subset": "v2", "weight": 10},
                        ],
                    },
                ],
            },
        },
        {
            "apiVersion": "meshd.io/v1",
            "kind": "RateLimit",
            "metadata": {"name": "api-limit"},
            "spec": {"destination": "api", "requests_per_second": 50, "burst": 100},
        },
    ]


#: (seconds ago, kind, subject, detail, severity) of the fake's first events.
DEMO_EVENTS: tuple[tuple[float, str, str, str, Severity], ...] = (
    (300, "sidecar.registered", "api-v2-sidecar", "api", "info"),
    (299, "sidecar.connected", "api-v2-sidecar", "", "info"),
    (60, "resource.updated", "HTTPRoute/api", "by admin", "info"),
    (59, "snapshot.pushed", "api-v2-sidecar", "version 12", "info"),
    (59, "snapshot.nacked", "api-v2-sidecar", "version 12: route canary: fault.headers", "error"),
    (58, "sidecar.unsupported", "api-v2-sidecar", "fault.headers at routes[1]", "warning"),
    (58, "snapshot.acked", "web-sidecar", "version 12", "info"),
)


def stats_row(rps: float, errors: float, p50: float) -> dict[str, Any]:
    """A telemetry row's counters for ``rps`` over a minute, ``errors`` of them failing."""
    requests = int(rps * 60)
    failed = int(requests * errors)
    return {
        "requests": requests,
        "errors": failed,
        "rps": rps,
        "success_rate": 1 - errors if requests else None,
        "p50_ms": p50,
        "p95_ms": p50 * 3,
        "p99_ms": p50 * 6,
        "rps_series": tuple(rps * f for f in (0.6, 0.8, 1.0, 0.9, 1.1, 1.0)),
    }
