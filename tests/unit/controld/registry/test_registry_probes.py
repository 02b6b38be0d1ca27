"""controld's HTTP check probe against raw HTTP servers on 127.0.0.1."""

from __future__ import annotations

import pytest
import trio

from controld.registry.model import CRITICAL, PASSING, CheckSpec
from controld.registry.probes import http_probe


async def _serve_once(response: bytes, task_status: trio.TaskStatus[int]) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    task_status.started(port)
    async with listeners[0] as listener:
        stream = await listener.accept()
        async with stream:
            await stream.receive_some(65536)
            await stream.send_all(response)  # head and body in one segment


@pytest.mark.parametrize(
    ("response", "status"),
    [
        # A body sent with a 204 (which has none) is ignored, as Go's client does.
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\nok", PASSING),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", PASSING),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", PASSING),
        (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", CRITICAL),
        (b"NOT HTTP AT ALL\r\n\r\n", CRITICAL),
    ],
)
async def test_http_probe_status(nursery: trio.Nursery, response: bytes, status: str) -> None:
    port = await nursery.start(_serve_once, response)
    spec = CheckSpec(kind="http", http=f"http://127.0.0.1:{port}/health", timeout=5.0)
    got, output = await http_probe(spec)
    assert got == status, output
