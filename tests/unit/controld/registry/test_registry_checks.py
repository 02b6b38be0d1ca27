"""HTTP, TCP and alias checks actually run, and critical services get reaped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from controld.registry import RegistryConfig, RegistryServer


class StatusApp:
    """A tiny HTTP server answering every request with ``self.status``."""

    def __init__(self) -> None:
        self.status = 200
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
            body = f"status {self.status}".encode()
            head = (
                f"HTTP/1.1 {self.status} X\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            await stream.send_all(head.encode() + body)


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path) -> RegistryServer:
    config = RegistryConfig(
        data_dir=tmp_path,
        port=0,
        node_name="node1",
        deregister_critical_min_s=0,
        reap_interval_s=0.1,
    )
    srv = RegistryServer(config)
    await nursery.start(srv.run)
    return srv


@pytest.fixture
async def api(server: RegistryServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as c:
        yield c


async def _wait_status(api: httpx.AsyncClient, check_id: str, status: str) -> dict[str, str]:
    with trio.fail_after(15):
        while True:
            check = (await api.get("/v1/agent/checks")).json().get(check_id)
            if check is not None and check["Status"] == status:
                return dict(check)
            await trio.sleep(0.05)


async def test_http_check_maps_status_codes(api: httpx.AsyncClient, nursery: trio.Nursery) -> None:
    app = StatusApp()
    await nursery.start(app.serve)
    url = f"http://127.0.0.1:{app.port}/health"
    body = {"Name": "web", "Port": app.port, "Check": {"HTTP": url, "Interval": "1s"}}
    await api.put("/v1/agent/service/register", json=body)
    check = await _wait_status(api, "service:web", "passing")
    assert check["Output"] == f"HTTP GET {url}: 200 OK Output: status 200"
    assert check["Type"] == "http"
    app.status = 429
    await _wait_status(api, "service:web", "warning")
    app.status = 503
    await _wait_status(api, "service:web", "critical")


async def test_tcp_check(api: httpx.AsyncClient, nursery: trio.Nursery) -> None:
    app = StatusApp()
    await nursery.start(app.serve)
    body = {"Name": "db", "Check": {"TCP": f"127.0.0.1:{app.port}", "Interval": "1s"}}
    await api.put("/v1/agent/service/register", json=body)
    check = await _wait_status(api, "service:db", "passing")
    assert check["Output"] == f"TCP connect 127.0.0.1:{app.port}: Success"


async def test_unreachable_http_check_is_critical(api: httpx.AsyncClient) -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    body = {"Name": "c", "HTTP": f"http://127.0.0.1:{port}/", "Interval": "1s", "Status": "passing"}
    await api.put("/v1/agent/check/register", json=body)
    check = await _wait_status(api, "c", "critical")
    assert "connection refused" in check["Output"]


async def test_alias_check_follows_its_service(api: httpx.AsyncClient) -> None:
    await api.put("/v1/agent/service/register", json={"Name": "web", "Check": {"TTL": "60s"}})
    await api.put("/v1/agent/check/register", json={"Name": "al", "AliasService": "web"})
    await _wait_status(api, "al", "critical")
    await api.put("/v1/agent/check/pass/service:web")
    await _wait_status(api, "al", "passing")


async def test_deregister_critical_service_after(api: httpx.AsyncClient) -> None:
    check = {"TTL": "60s", "DeregisterCriticalServiceAfter": "300ms"}
    await api.put("/v1/agent/service/register", json={"Name": "doomed", "Check": check})
    with trio.fail_after(15):
        while "doomed" in (await api.get("/v1/agent/services")).json():
            await trio.sleep(0.1)
    assert (await api.get("/v1/catalog/service/doomed")).json() == []
