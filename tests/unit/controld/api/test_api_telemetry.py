"""Telemetry endpoints in-process: reports in (scopes, bounds), views and taps out."""

from __future__ import annotations

from typing import Any

import pytest
from api_support import serving_api

from meshcore.api.report import TelemetryAck
from meshcore.api.telemetry import ServicesTelemetry, TapCreated, TapEvents

pytestmark = pytest.mark.timeout(30)

DESCRIPTOR: dict[str, Any] = {
    "proxy_id": "web-1",
    "service": "web",
    "inbound": "127.0.0.1:15006",
    "upstreams": [{"service": "api", "port": 15001}],
}


def report(seq: int = 0, **extra: Any) -> dict[str, Any]:
    latency = [0] * 15
    latency[2] = 10
    return {
        "service": "web",
        "seq": seq,
        "http": [
            {
                "destination": "api",
                "route": "r",
                "requests": 10,
                "errors": {"http_5xx": 1},
                "latency": latency,
            }
        ],
        **extra,
    }


async def test_report_then_services_view() -> None:
    async with serving_api() as api:
        resp = await api.client.post("/v1/proxies/web-1", json=DESCRIPTOR)
        assert resp.status_code == 200
        async with api.as_token(await api.sidecar_token("web")) as sidecar:
            resp = await sidecar.post("/v1/telemetry/web-1", json=report())
            assert resp.status_code == 200, resp.text
            assert TelemetryAck.model_validate(resp.json()).taps == ()
            # The token's service must be the proxy's.
            resp = await sidecar.post("/v1/telemetry/other-1", json=report())
            assert resp.status_code == 404
            # The report's service must be the registered one.
            resp = await sidecar.post("/v1/telemetry/web-1", json={**report(), "service": "x"})
            assert resp.status_code == 422
            # Operators' views need the admin token.
            resp = await sidecar.get("/v1/telemetry/services")
            assert resp.status_code == 403
        async with api.as_token(await api.sidecar_token("api")) as other:
            resp = await other.post("/v1/telemetry/web-1", json=report())
            assert resp.status_code == 403
        resp = await api.client.get("/v1/telemetry/services", params={"window_s": 60})
        assert resp.status_code == 200
        view = ServicesTelemetry.model_validate(resp.json())
        [row] = view.services
        assert row.service == "api" and row.requests == 10
        assert row.success_rate == pytest.approx(0.9)
        assert row.p50_ms == 2.5
        resp = await api.client.get("/v1/telemetry/routes", params={"service": "api"})
        assert resp.json()["routes"][0]["route"] == "r"
        resp = await api.client.get("/v1/telemetry/edges")
        assert resp.json()["edges"][0]["source"] == "web"
        resp = await api.client.get("/v1/telemetry/instances")
        [inst] = resp.json()["instances"]
        assert inst["proxy_id"] == "web-1"
        # The window is at most 15 minutes.
        resp = await api.client.get("/v1/telemetry/services", params={"window_s": 901})
        assert resp.status_code == 422


async def test_reports_are_bounded() -> None:
    async with serving_api() as api:
        resp = await api.client.post(
            "/v1/telemetry/web-1",
            content=b"{" + b" " * (600 * 1024) + b"}",
            headers={"content-type": "application/json"},
        )
        assert resp.status_code == 413
        too_many = [{"destination": f"s{i}", "route": "r", "requests": 1} for i in range(257)]
        resp = await api.client.post("/v1/telemetry/web-1", json=report(http=too_many))
        assert resp.status_code == 422
        resp = await api.client.post("/v1/telemetry/web-1", content=b"not json")
        assert resp.status_code == 422


async def test_tap_round_trip() -> None:
    async with serving_api() as api:
        resp = await api.client.post(
            "/v1/taps", json={"filter": {"destination": "api"}, "duration_s": 30}
        )
        assert resp.status_code == 200, resp.text
        tap = TapCreated.model_validate(resp.json())
        # The sidecar learns the tap from its report's answer ...
        resp = await api.client.post("/v1/telemetry/web-1", json=report())
        [active] = TelemetryAck.model_validate(resp.json()).taps
        assert active.id == tap.id and active.filter.destination == "api"
        # ... and sends its events with the next report.
        ev = {
            "tap_id": tap.id,
            "ts": 1.0,
            "source": "web",
            "destination": "api",
            "method": "GET",
            "path": "/x",
            "status": 200,
            "latency_ms": 1.5,
        }
        resp = await api.client.post("/v1/telemetry/web-1", json=report(1, tap_events=[ev]))
        assert resp.status_code == 200
        resp = await api.client.get(f"/v1/taps/{tap.id}/events", params={"after": 0, "wait_s": 0})
        events = TapEvents.model_validate(resp.json())
        assert [e.path for e in events.events] == ["/x"] and events.next == 1
        resp = await api.client.delete(f"/v1/taps/{tap.id}")
        assert resp.status_code == 204
        resp = await api.client.get(f"/v1/taps/{tap.id}/events", params={"after": 1})
        assert TapEvents.model_validate(resp.json()).done
        resp = await api.client.get("/v1/taps/nope/events")
        assert resp.status_code == 404
        resp = await api.client.post("/v1/taps", json={"max_events_per_s": 101})
        assert resp.status_code == 422
