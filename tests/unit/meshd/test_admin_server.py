"""meshd's small admin HTTP server over real sockets: keep-alive, bounds, graceful shutdown."""

from __future__ import annotations

import contextlib
from collections.abc import MutableMapping
from typing import Any

import pytest
import trio

from meshd.admin.server import MAX_BODY, AdminServer

pytestmark = pytest.mark.timeout(30)


class SlowApp:
    """Answers ``<method> <path> <body length>``; ``/slow`` waits for :attr:`gate` first."""

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.entered = trio.Event()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        if scope["path"] == "/slow":
            self.entered.set()
            await self.gate.wait()
        if scope["path"] == "/boom":
            raise RuntimeError("broken view")
        body = f"{scope['method']} {scope['path']} {len(message['body'])}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


class ResponseReader:
    """Reads responses one by one from a stream, by content-length, keeping what arrived of
    the next one (pipelined answers can come in one read)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> tuple[bytes, bytes]:
        """One response (head, body); ``(what came, b"")`` if the peer closed first."""
        while b"\r\n\r\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                data, self.buffer = self.buffer, b""
                return data, b""
            self.buffer += chunk
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                break
            rest += chunk
        body, self.buffer = rest[:length], rest[length:]
        return head, body


async def read_response(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    """One response (head, body) of a stream that carries only one."""
    return await ResponseReader(stream).next()


async def test_keep_alive_and_pipelining() -> None:
    server = AdminServer(SlowApp(), "127.0.0.1", 0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            )
            reader = ResponseReader(stream)
            head, body = await reader.next()
            assert head.startswith(b"HTTP/1.1 200") and body == b"GET /a 0"
            assert b"connection: close" not in head.lower()
            head, body = await reader.next()
            assert body == b"POST /b 3"
            await stream.send_all(b"GET /c HTTP/1.0\r\n\r\n")
            head, body = await reader.next()
            assert body == b"GET /c 0" and b"connection: close" in head
            assert await stream.receive_some(10) == b""
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NOT HTTP\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)
        + b"x" * (MAX_BODY + 1),
    ],
)
async def test_bad_or_oversized_request_gets_400_and_close(request_bytes: bytes) -> None:
    server = AdminServer(SlowApp(), "127.0.0.1", 0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError):
                # The server may answer and close before the whole body is sent.
                await stream.send_all(request_bytes)
            try:
                head, _ = await read_response(stream)
            except trio.BrokenResourceError:
                head = b"(reset)"  # the unread rest of the body made the close a reset
            assert head.startswith(b"HTTP/1.1 400") or head == b"(reset)"
        nursery.cancel_scope.cancel()


async def test_broken_view_is_500_and_the_server_serves_on() -> None:
    server = AdminServer(SlowApp(), "127.0.0.1", 0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
            head, _ = await read_response(stream)
            assert head.startswith(b"HTTP/1.1 500")
            await stream.send_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            _, body = await read_response(stream)
            assert body == b"GET /ok 0"
        nursery.cancel_scope.cancel()


async def test_shutdown_finishes_in_flight_and_closes_idle() -> None:
    app = SlowApp()
    server = AdminServer(app, "127.0.0.1", 0, graceful_timeout=5.0)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.run)
            idle = await trio.open_tcp_stream("127.0.0.1", port)
            busy = await trio.open_tcp_stream("127.0.0.1", port)
            await idle.send_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_response(idle)
            await busy.send_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            await app.entered.wait()
            server.shutdown_nowait()
            # The idle keep-alive connection is closed; the busy one gets its answer.
            assert await idle.receive_some(10) == b""
            app.gate.set()
            head, body = await read_response(busy)
            assert body == b"GET /slow 0" and b"connection: close" in head
            await idle.aclose()
            await busy.aclose()
        # run() returned by itself.
