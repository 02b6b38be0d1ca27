"""Telemetry, taps and traces end to end: controld, two real sidecars, a real app, an OTLP
receiver.

The mesh: ``web-1`` (upstream ``api``) and ``api-1`` in front of a stdlib app, both sidecars
in controld mode with ``trace_sample_rate: 1`` and ``tracing`` pointed at a small OTLP/HTTP
receiver served by hypercorn in the test. One test, in steps that build on each other:

1. requests through web's outbound listener show up in ``/v1/telemetry/services``, ``routes``,
   ``endpoints`` (with the instance's proxy id), ``edges`` and ``instances``;
2. the receiver gets spans: web's client span is the parent of api's server span (same
   trace), with route, endpoint, status and peer identity attributes;
3. a tap returns matching events only, and is done after its duration;
4. with the receiver gone, every request still succeeds, and meshd counts the failed exports.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import trio
from cp_mesh_support import Api, Apps, Controld, Sidecar, free_ports, wait_for
from hypercorn.config import Config
from hypercorn.trio import serve

from meshcore.api.telemetry import (
    EdgesTelemetry,
    EndpointsTelemetry,
    InstancesTelemetry,
    RoutesTelemetry,
    ServicesTelemetry,
    TapCreated,
    TapEvents,
)

pytestmark = pytest.mark.timeout(180)


class Receiver:
    """An OTLP/HTTP (JSON) trace receiver: keeps every ``POST /v1/traces`` body."""

    def __init__(self) -> None:
        self.docs: list[dict[str, Any]] = []

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] == "POST" and scope["path"] == "/v1/traces":
            self.docs.append(json.loads(body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    def spans(self) -> list[dict[str, Any]]:
        """Every span received, with its resource's ``service.name`` as ``_service``."""
        out: list[dict[str, Any]] = []
        for doc in self.docs:
            for rs in doc["resourceSpans"]:
                attrs = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}
                service = attrs["service.name"]["stringValue"]
                for ss in rs["scopeSpans"]:
                    out.extend({**span, "_service": service} for span in ss["spans"])
        return out


class Mesh:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.controld = Controld(workdir / "controld")
        self.controld.workdir.mkdir()
        self.apps = Apps(workdir, ("api-1",))
        self.sidecars: list[Sidecar] = []

    def stop(self) -> None:
        for sidecar in self.sidecars:
            sidecar.stop()
        self.controld.stop()
        self.apps.stop()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path)
    try:
        yield m
    finally:
        m.stop()


def _attrs(span: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for a in span["attributes"]:
        value = a["value"]
        out[a["key"]] = value.get("stringValue", value.get("intValue"))
    return out


async def test_telemetry_taps_and_traces(mesh: Mesh) -> None:
    receiver = Receiver()
    otlp_port, web_up, web_in, api_in = free_ports(4)
    config = Config()
    config.bind = [f"127.0.0.1:{otlp_port}"]
    config.accesslog = None
    config.errorlog = None
    api = Api(mesh.controld)
    try:
        async with trio.open_nursery() as nursery:
            receiver_scope = trio.CancelScope()

            async def serve_receiver(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                with receiver_scope:
                    # A plain ASGI callable; hypercorn's types are narrower than needed.
                    await serve(cast(Any, receiver.app), config, task_status=task_status)

            await nursery.start(serve_receiver)
            await mesh.controld.start()
            mesh.apps.start()
            await _run(mesh, api, receiver, receiver_scope, web_up, web_in, api_in, otlp_port)
            nursery.cancel_scope.cancel()
    except BaseException:
        for sidecar in mesh.sidecars:
            print(f"--- {sidecar.name}\n{sidecar.log_tail()}")
        print(f"--- controld\n{mesh.controld.log_tail(60)}")
        raise
    finally:
        await api.aclose()


async def _run(
    mesh: Mesh,
    api: Api,
    receiver: Receiver,
    receiver_scope: trio.CancelScope,
    web_up: int,
    web_in: int,
    api_in: int,
    otlp_port: int,
) -> None:
    tracing = {
        "trace_sample_rate": 1.0,
        "tracing": {"otlp_endpoint": f"http://127.0.0.1:{otlp_port}", "export_interval_s": 0.2},
    }
    layout = [("web-1", "web", web_in, {"api": web_up}), ("api-1", "api", api_in, {})]
    for name, service, inbound, upstreams in layout:
        doc = await api.ok("POST", "/v1/tokens/sidecar", {"service": service})
        sidecar = Sidecar(
            mesh.workdir,
            name,
            service,
            app_port=mesh.apps.ports.get(name, mesh.apps.ports["api-1"]),
            inbound_port=inbound,
            upstreams=upstreams,
            extra=tracing,
        )
        sidecar.write_bootstrap(mesh.controld, str(doc["token"]))
        mesh.sidecars.append(sidecar)
    async with trio.open_nursery() as nursery:
        for sidecar in mesh.sidecars:
            nursery.start_soon(sidecar.start)

    async with httpx.AsyncClient(timeout=5.0) as client:
        url = f"http://127.0.0.1:{web_up}"

        # Warm-up answers the sidecar gave before api's endpoint was in its snapshot (503
        # no_healthy_upstream): real answers, counted in the telemetry like any other.
        refused: list[int] = []

        async def reachable() -> bool:
            try:
                status = (await client.get(f"{url}/warmup")).status_code
            except httpx.HTTPError:
                return False
            if status != 200:
                refused.append(status)
            return status == 200

        await wait_for(reachable, what="web -> api through the mesh")
        for i in range(40):
            resp = await client.get(f"{url}/items/{i}")
            assert resp.status_code == 200, resp.text

        await _step1_views(api, refused=len(refused))
        await _step2_traces(receiver)
        await _step3_tap(api, client, url)
        await _step4_receiver_down(mesh, receiver_scope, client, url)


async def _step1_views(api: Api, *, refused: int) -> None:
    async def services() -> ServicesTelemetry | None:
        view = ServicesTelemetry.model_validate(await api.ok("GET", "/v1/telemetry/services"))
        rows = [s for s in view.services if s.service == "api" and s.requests - s.errors >= 41]
        return view if rows else None

    view = await wait_for(services, what="api's traffic in /v1/telemetry/services", every=0.5)
    [row] = [s for s in view.services if s.service == "api"]
    # Every error is a refused warm-up; the 40 calls and the successful warm-up all count.
    assert row.errors <= refused and row.requests - row.errors >= 41, row
    assert row.success_rate == (row.requests - row.errors) / row.requests
    assert sum(row.errors_by_reason.values()) == row.errors, row
    if not refused:
        assert row.success_rate == 1.0
    assert row.rps > 0 and row.p50_ms is not None and row.p99_ms is not None
    assert len(row.rps_series) == 6 and sum(row.rps_series) > 0

    routes = RoutesTelemetry.model_validate(await api.ok("GET", "/v1/telemetry/routes?service=api"))
    assert routes.routes and sum(r.requests for r in routes.routes) == row.requests
    endpoints = EndpointsTelemetry.model_validate(
        await api.ok("GET", "/v1/telemetry/endpoints?service=api")
    )
    [ep] = endpoints.endpoints
    assert ep.proxy_id == "api-1", ep
    edges = EdgesTelemetry.model_validate(await api.ok("GET", "/v1/telemetry/edges"))
    [edge] = [e for e in edges.edges if (e.source, e.destination) == ("web", "api")]
    # The edge counts the same answers: only refused warm-ups (web's 503s) may be failures.
    assert edge.protocol == "http" and edge.error_rate is not None
    assert edge.error_rate <= refused / (41 + refused), (edge, refused)

    async def instances() -> InstancesTelemetry | None:
        doc = InstancesTelemetry.model_validate(await api.ok("GET", "/v1/telemetry/instances"))
        ok = {i.proxy_id for i in doc.instances if i.snapshot_version is not None}
        return doc if {"web-1", "api-1"} <= ok else None

    await wait_for(instances, what="both sidecars in /v1/telemetry/instances", every=0.5)


async def _step2_traces(receiver: Receiver) -> None:
    def linked() -> tuple[dict[str, Any], dict[str, Any]] | None:
        spans = receiver.spans()
        clients = {s["spanId"]: s for s in spans if s["_service"] == "web" and s["kind"] == 3}
        for s in spans:
            if s["_service"] == "api" and s["kind"] == 2 and s.get("parentSpanId") in clients:
                return clients[s["parentSpanId"]], s
        return None

    client, server = await wait_for(linked, what="a client span parenting a server span")
    assert client["traceId"] == server["traceId"]
    assert "parentSpanId" not in client  # the client sidecar started the trace
    ca, sa = _attrs(client), _attrs(server)
    assert ca["meshd.destination"] == "api" and ca["http.response.status_code"] == "200"
    assert ca["meshd.upstream_endpoint"].startswith("127.0.0.1:")
    assert ca["meshd.retries"] == "0"
    assert sa["meshd.direction"] == "inbound" and sa["meshd.destination"] == "api"
    assert sa["url.path"] == ca["url.path"]


async def _step3_tap(api: Api, client: httpx.AsyncClient, url: str) -> None:
    created = TapCreated.model_validate(
        await api.ok(
            "POST",
            "/v1/taps",
            {
                "filter": {"destination": "api", "path_prefix": "/tapped"},
                "max_events_per_s": 100,
                "duration_s": 4,
            },
        )
    )
    events: list[Any] = []
    after = 0
    done = False
    # Traffic while the tap runs (the sidecars learn it with their next report), half of it
    # not matching; read the events as they come.
    with trio.fail_after(60):
        while not done:
            for i in range(5):
                assert (await client.get(f"{url}/tapped/{i}")).status_code == 200
                assert (await client.get(f"{url}/other/{i}")).status_code == 200
            page = TapEvents.model_validate(
                await api.ok("GET", f"/v1/taps/{created.id}/events?after={after}&wait_s=0.5")
            )
            events.extend(page.events)
            after, done = page.next, page.done
    assert events, "no tap events"
    assert all(e.path.startswith("/tapped/") and e.destination == "api" for e in events)
    assert {e.direction for e in events} <= {"inbound", "outbound"}
    assert all(e.status == 200 and len(e.trace_id) == 32 for e in events)
    outbound = [e for e in events if e.direction == "outbound"]
    assert outbound and all(e.source == "web" and e.endpoint for e in outbound)
    # Done: more matching traffic adds nothing.
    for i in range(5):
        assert (await client.get(f"{url}/tapped/late{i}")).status_code == 200
    await trio.sleep(1.5)
    page = TapEvents.model_validate(
        await api.ok("GET", f"/v1/taps/{created.id}/events?after={after}&wait_s=0")
    )
    assert page.events == () and page.done


async def _step4_receiver_down(
    mesh: Mesh, receiver_scope: trio.CancelScope, client: httpx.AsyncClient, url: str
) -> None:
    receiver_scope.cancel()
    await trio.sleep(0.2)
    for i in range(100):
        resp = await client.get(f"{url}/after/{i}")
        assert resp.status_code == 200, resp.text
    web = mesh.sidecars[0]

    async def failed_exports() -> bool:
        metrics = (await client.get(f"http://127.0.0.1:{web.admin_port}/metrics")).text
        return 'meshd_trace_spans_total{result="failed"}' in metrics

    await wait_for(failed_exports, what="failed span exports counted", every=0.3)
    metrics = (await client.get(f"http://127.0.0.1:{web.admin_port}/metrics")).text
    assert "meshd_upstream_endpoint_requests_total{" in metrics
