"""The registry's small HTTP/1.1 server: keep-alive, pipelining, bodies, errors, shutdown."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pytest
import trio

from controld.registry.httpserver import HTTPServer

Scope = MutableMapping[str, Any]


async def echo_app(
    scope: Scope, receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
) -> None:
    message = await receive()
    body = f"{scope['method']} {scope['path']} {scope['query_string'].decode()} ".encode()
    body += message["body"]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def port(nursery: trio.Nursery) -> int:
    server = HTTPServer(echo_app, "127.0.0.1", 0)
    return int(await nursery.start(server.run))


async def _exchange(port: int, data: bytes, until: bytes, count: int = 1) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        got = b""
        with trio.fail_after(5):
            while got.count(until) < count:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                got += chunk
        return got


async def test_keep_alive_and_pipelining(port: int) -> None:
    reqs = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\nGET /b%20c HTTP/1.1\r\nHost: h\r\n\r\n"
    got = await _exchange(port, reqs, b"HTTP/1.1 200 OK", 2)
    assert b"GET /a x=1 " in got
    assert b"GET /b c " in got
    assert b"content-length: " in got
    assert b"connection: close" not in got


async def test_bodies_chunked_and_expect_continue(port: int) -> None:
    chunked = (
        b"PUT /k HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"
    )
    assert b"PUT /k  hello" in await _exchange(port, chunked, b"hello")
    cont = b"PUT /k HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi"
    got = await _exchange(port, cont, b"PUT /k  hi")
    assert got.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")


async def test_http_1_0_closes(port: int) -> None:
    got = await _exchange(port, b"GET /x HTTP/1.0\r\n\r\n", b"connection: close")
    assert b"connection: close" in got


async def test_garbage_is_a_400(port: int) -> None:
    got = await _exchange(port, b"\x00\x01 nonsense\r\n\r\n", b"400")
    assert got.startswith(b"HTTP/1.1 400 Bad Request")


async def test_shutdown_closes_idle_connections(nursery: trio.Nursery) -> None:
    server = HTTPServer(echo_app, "127.0.0.1", 0, graceful_timeout=0.5)
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[int]) -> None:
        await server.run(task_status=task_status)
        done.set()

    port = await nursery.start(run)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        server.shutdown_nowait()
        with trio.fail_after(5):
            await done.wait()
            assert await stream.receive_some(10) == b""
