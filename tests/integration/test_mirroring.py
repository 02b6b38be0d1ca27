"""Request mirroring through a real sidecar: copies arrive at the mirror backend; a dead or a
hanging mirror costs the client nothing (issue 12).

Client -> outbound sidecar (route ``main`` mirrors to cluster ``shadow``) -> the app; the copy
goes to a scripted mirror backend. Assertions are on outcomes (statuses, what each backend
saw, counters), never on speed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import (
    TIMEOUT,
    RawClient,
    RawServer,
    TestApp,
    admin_get,
    closed_port,
    cluster,
    port_of,
    read_head,
    request,
    start_sidecar,
    write_sidecar_config,
)

from meshd.sidecar import Sidecar

pytestmark = pytest.mark.timeout(60)


class MirrorBackend:
    """Records each request (head, body), answers 200 and closes; or hangs, if told to."""

    def __init__(self, *, hang: bool = False) -> None:
        self.hang = hang
        self.requests: list[tuple[bytes, bytes]] = []
        self.server = RawServer(self._handle)

    async def _handle(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        head = await read_head(stream, buffer)
        if not head:
            return
        if self.hang:
            self.requests.append((head, b""))
            await trio.sleep_forever()
        length = int(_head_fields(head)[1].get(b"content-length", b"0"))
        with trio.fail_after(TIMEOUT):
            while len(buffer) < length:
                buffer += await stream.receive_some(65536)
        self.requests.append((head, bytes(buffer)))
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nshadow")


def _head_fields(head: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    first, *lines = head.rstrip(b"\r\n").split(b"\r\n")
    fields = {}
    for line in lines:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    return first, fields


async def _sidecar(
    nursery: trio.Nursery,
    tmp_path: Path,
    app_port: int,
    mirror_port: int,
    *,
    percent: float = 100,
    **shadow: Any,
) -> tuple[Sidecar, int]:
    path = write_sidecar_config(
        tmp_path,
        service="web",
        app_port=closed_port(),
        listeners=[
            {
                "name": "out",
                "direction": "outbound",
                "address": "127.0.0.1:0",
                "route_table": "main",
            }
        ],
        clusters=[cluster("up", app_port, service="api"), cluster("shadow", mirror_port, **shadow)],
        route_tables=[
            {
                "name": "main",
                "routes": [
                    {
                        "name": "all",
                        "backends": [{"cluster": "up"}],
                        "mirror": {"cluster": "shadow", "percent": percent},
                    }
                ],
            }
        ],
    )
    sidecar = await start_sidecar(nursery, path)
    return sidecar, port_of(sidecar, "out")


async def _send_all(port: int, count: int, *, body: bytes | None = None) -> list[int]:
    """``count`` requests on one keep-alive connection; their statuses."""
    statuses = []
    async with RawClient.connect(port) as client:
        for i in range(count):
            method = "POST" if body is not None else "GET"
            await client.send(request(method, f"/item/{i}?q={i}", host="api.test", body=body))
            response = await client.read_response()
            statuses.append(response.status)
            if response.status == 200:
                assert json.loads(response.body)["path"] == f"/item/{i}"
    return statuses


def _mirrored(sidecar: Sidecar, result: str) -> float:
    return sidecar.stats.policy.value("meshd_mirrored_requests", "shadow", result)


async def _wait_for(condition: Any) -> None:
    with trio.fail_after(TIMEOUT):
        while not condition():
            await trio.sleep(0.02)


async def test_copies_arrive_at_the_mirror(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    mirror = MirrorBackend()
    await nursery.start(mirror.server.run)
    sidecar, port = await _sidecar(nursery, tmp_path, app.port, mirror.server.port)
    assert await _send_all(port, 5) == [200] * 5
    assert await _send_all(port, 2, body=b"payload") == [200] * 2
    await _wait_for(lambda: _mirrored(sidecar, "sent") == 7)
    assert app.requests == 7
    assert len(mirror.requests) == 7
    seen = {}
    for head, body in mirror.requests:
        first, fields = _head_fields(head)
        seen[first] = body
        assert fields[b"host"] == b"api.test-shadow"
        assert fields[b"connection"] == b"close"
        assert b"x-request-id" in fields
    assert set(seen) == {
        *(b"GET /item/%d?q=%d HTTP/1.1" % (i, i) for i in range(5)),
        *(b"POST /item/%d?q=%d HTTP/1.1" % (i, i) for i in range(2)),
    }
    assert seen[b"POST /item/1?q=1 HTTP/1.1"] == b"payload"
    metrics = (await admin_get(sidecar, "/metrics")).text
    assert 'meshd_mirrored_requests_total{cluster="shadow",result="sent"} 7.0' in metrics


async def test_percent_zero_mirrors_nothing(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    mirror = MirrorBackend()
    await nursery.start(mirror.server.run)
    sidecar, port = await _sidecar(nursery, tmp_path, app.port, mirror.server.port, percent=0)
    assert await _send_all(port, 5) == [200] * 5
    assert app.requests == 5
    assert mirror.server.connections == 0
    assert _mirrored(sidecar, "sent") == _mirrored(sidecar, "dropped") == 0


async def test_a_dead_mirror_costs_the_client_nothing(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    sidecar, port = await _sidecar(nursery, tmp_path, app.port, closed_port())
    assert await _send_all(port, 20) == [200] * 20
    assert app.requests == 20
    await _wait_for(lambda: _mirrored(sidecar, "failed") == 20)
    assert _mirrored(sidecar, "sent") == 0


async def test_a_hanging_mirror_costs_the_client_nothing(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    mirror = MirrorBackend(hang=True)
    await nursery.start(mirror.server.run)
    sidecar, port = await _sidecar(
        nursery, tmp_path, app.port, mirror.server.port, connect_timeout_s=0.5
    )
    # Copies give up after connect_timeout_s + this; the client never waits for them.
    sidecar.mirror.answer_timeout_s = 0.5
    assert await _send_all(port, 10) == [200] * 10
    assert app.requests == 10
    await _wait_for(lambda: _mirrored(sidecar, "failed") == 10)
    assert len(mirror.requests) == 10
    assert sidecar.mirror.in_flight == 0


async def test_copies_beyond_the_bound_are_dropped(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    mirror = MirrorBackend(hang=True)
    await nursery.start(mirror.server.run)
    sidecar, port = await _sidecar(nursery, tmp_path, app.port, mirror.server.port)
    bound = sidecar.mirror.max_in_flight = 4
    # A hanging copy takes connect_timeout_s + 5 s (10 s) to fail; the client doesn't wait.
    assert await _send_all(port, 10) == [200] * 10
    assert app.requests == 10
    in_flight = sidecar.mirror.in_flight
    dropped = _mirrored(sidecar, "dropped")
    counted = dropped + _mirrored(sidecar, "failed") + _mirrored(sidecar, "sent")
    assert in_flight <= bound
    assert in_flight + counted == 10
    # The copies hang for 10 s: if the client had been this slow, nothing would be dropped.
    assert dropped >= 1
