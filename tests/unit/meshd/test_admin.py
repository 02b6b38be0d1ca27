"""Tests for meshd.admin: the app served by AdminServer over real sockets."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from meshd.admin import AdminBindError, AdminServer, build_admin_app
from meshd.admin.app import AdminApp
from meshd.metrics import MetricsView
from meshd.stats import Stats


@dataclass
class FakeBackend:
    ready: bool = False
    draining: bool = False
    drain_calls: int = 0
    stats: Stats = field(default_factory=Stats)

    def is_ready(self) -> bool:
        return self.ready

    def is_draining(self) -> bool:
        return self.draining

    def config_dump(self) -> dict[str, Any]:
        return {"bootstrap": {"node": "web-1"}, "snapshot": {"version": 4}}

    def listeners_info(self) -> list[dict[str, Any]]:
        return [{"name": "outbound_http", "address": "127.0.0.1:15001"}]

    def clusters_info(self) -> list[dict[str, Any]]:
        return [{"name": "api", "endpoints": [{"address": "10.0.0.1:8080", "healthy": True}]}]

    def stats_info(self) -> dict[str, Any]:
        return self.stats.as_json()

    def start_drain(self) -> None:
        self.drain_calls += 1
        self.draining = True


def _app(backend: FakeBackend) -> AdminApp:
    """The admin app over ``backend``, its metrics view built at the first scrape."""
    view: list[MetricsView] = []

    def metrics() -> bytes:
        if not view:
            view.append(MetricsView(backend.stats))
        return view[0].render()

    return build_admin_app(backend, metrics)


@dataclass
class Admin:
    backend: FakeBackend
    client: httpx.AsyncClient
    server: AdminServer


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    backend = FakeBackend()
    server = AdminServer(_app(backend), "127.0.0.1", 0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)
        assert port == server.port != 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield Admin(backend, client, server)
        nursery.cancel_scope.cancel()


async def test_ready_live(admin: Admin) -> None:
    resp = await admin.client.get("/live")
    assert (resp.status_code, resp.text) == (200, "live")
    assert resp.headers["content-type"].startswith("text/plain")

    resp = await admin.client.get("/ready")
    assert (resp.status_code, resp.text) == (503, "not ready")
    admin.backend.ready = True
    resp = await admin.client.get("/ready")
    assert (resp.status_code, resp.text) == (200, "ready")
    admin.backend.draining = True
    resp = await admin.client.get("/ready")
    assert (resp.status_code, resp.text) == (503, "draining")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/config_dump", {"bootstrap": {"node": "web-1"}, "snapshot": {"version": 4}}),
        ("/listeners", [{"name": "outbound_http", "address": "127.0.0.1:15001"}]),
        (
            "/clusters",
            [{"name": "api", "endpoints": [{"address": "10.0.0.1:8080", "healthy": True}]}],
        ),
    ],
)
async def test_json_views(admin: Admin, path: str, expected: object) -> None:
    resp = await admin.client.get(path)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == expected


async def test_stats(admin: Admin) -> None:
    admin.backend.stats.upstream_error("api", "timeout")
    resp = await admin.client.get("/stats")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["cluster.api.upstream_errors.timeout"] == 1


async def test_metrics(admin: Admin) -> None:
    admin.backend.stats.http_request("inbound", "web", "api", "r1", "POST", 201, 0.004)
    resp = await admin.client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    (sample,) = families["meshd_requests"].samples
    assert sample.labels["method"] == "POST"
    assert sample.labels["code"] == "201"
    assert sample.value == 1
    assert "process_resident_memory_bytes" in families


async def test_first_scrape_returns_free_heap_once(
    admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first scrape imports the metrics modules, which leaves freed pages among live heap
    # blocks that glibc returns only when asked; later scrapes allocate the same again.
    trims: list[int] = []
    monkeypatch.setattr("meshd.admin.app.return_free_heap", lambda: trims.append(1))
    for _ in range(3):
        assert (await admin.client.get("/metrics")).status_code == 200
    assert trims == [1]


async def test_drain(admin: Admin) -> None:
    admin.backend.ready = True
    resp = await admin.client.post("/drain", json={})
    assert resp.status_code == 202
    assert resp.json() == {"draining": True}
    assert admin.backend.drain_calls == 1
    resp = await admin.client.get("/ready")
    assert (resp.status_code, resp.text) == (503, "draining")


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/ready"), ("DELETE", "/config_dump"), ("PUT", "/metrics"), ("GET", "/drain")],
)
async def test_wrong_method(admin: Admin, method: str, path: str) -> None:
    resp = await admin.client.request(method, path)
    assert resp.status_code == 405
    assert admin.backend.drain_calls == 0


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"content-type": "application/x-www-form-urlencoded"}, 415),
        ({"content-type": "multipart/form-data; boundary=x"}, 415),
        ({"content-type": "text/plain"}, 415),
        ({"content-type": "application/jsonx"}, 415),
        ({"content-type": "application/json", "origin": "http://evil.example"}, 403),
        ({"content-type": "application/json", "origin": "null"}, 403),
        ({"content-type": "application/json", "sec-fetch-site": "cross-site"}, 403),
        ({"content-type": "application/json", "sec-fetch-site": "same-site"}, 403),
        ({"content-type": "application/json", "host": "rebound.example:15000"}, 403),
    ],
)
async def test_drain_refuses_browser_requests(
    admin: Admin, headers: dict[str, str], status: int
) -> None:
    resp = await admin.client.post("/drain", content=b"{}", headers=headers)
    assert resp.status_code == status, resp.text
    assert "error" in resp.json()
    assert "access-control-allow-origin" not in resp.headers
    assert admin.backend.drain_calls == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "Application/JSON; charset=utf-8"},
        {"content-type": "application/json", "sec-fetch-site": "same-origin"},
        {"content-type": "application/json", "sec-fetch-site": "none"},
        {"content-type": "application/json", "host": "localhost:15000"},
        {"content-type": "application/json", "host": "[::1]:15000", "origin": "http://[::1]:15000"},
    ],
)
async def test_drain_accepts_local_json(admin: Admin, headers: dict[str, str]) -> None:
    resp = await admin.client.post("/drain", content=b"{}", headers=headers)
    assert resp.status_code == 202, resp.text
    assert admin.backend.drain_calls == 1


async def test_unknown_path(admin: Admin) -> None:
    resp = await admin.client.get("/nope")
    assert resp.status_code == 404


async def test_graceful_shutdown_returns() -> None:
    backend = FakeBackend()
    server = AdminServer(_app(backend), "127.0.0.1", 0)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.run)
            async with httpx.AsyncClient() as client:
                resp = await client.get(f"http://127.0.0.1:{port}/live")
                assert resp.status_code == 200
            server.shutdown_nowait()
        # run() returned on its own: the nursery closed without a cancel.
    with pytest.raises(OSError):  # noqa: PT011 -- the port is closed; errno varies
        await trio.open_tcp_stream("127.0.0.1", port)


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_loopback() -> None:
    backend = FakeBackend()
    server = AdminServer(_app(backend), "::1", 0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)
        async with httpx.AsyncClient() as client:
            resp = await client.get(f"http://[::1]:{port}/live")
        assert resp.text == "live"
        nursery.cancel_scope.cancel()


async def test_port_in_use_is_typed_error() -> None:
    backend = FakeBackend()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = AdminServer(_app(backend), "127.0.0.1", port)
        with pytest.raises(AdminBindError, match="in use"):
            await server.run()


async def test_address_not_local_is_typed_error() -> None:
    backend = FakeBackend()
    # TEST-NET-1: never assigned to a local interface, so bind fails without any traffic.
    server = AdminServer(_app(backend), "192.0.2.1", 0)
    with pytest.raises(AdminBindError):
        await server.run()
