"""The registry's small HTTP/1.1 server: keep-alive, pipelining, bodies, errors, shutdown."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pytest
import trio

from controld.registry.httpserver import HTTPServer, ServerLimits

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


# -- limits ------------------------------------------------------------------------------------


async def _limited(nursery: trio.Nursery, **limits: Any) -> tuple[HTTPServer, int]:
    events: list[str] = []
    server = HTTPServer(
        echo_app, "127.0.0.1", 0, limits=ServerLimits(**limits), on_event=events.append
    )
    server.events = events  # type: ignore[attr-defined]
    return server, int(await nursery.start(server.run))


async def _read_all(stream: trio.SocketStream) -> bytes:
    got = b""
    with trio.fail_after(5):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            got += chunk
    return got


async def test_header_count_limit(nursery: trio.Nursery) -> None:
    _, port = await _limited(nursery, max_headers=10)
    ok = b"GET / HTTP/1.1\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(10)) + b"\r\n"
    assert (await _exchange(port, ok, b"200 OK")).startswith(b"HTTP/1.1 200 OK")
    many = b"GET / HTTP/1.1\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(11)) + b"\r\n"
    got = await _exchange(port, many, b"Too many")
    assert got.startswith(b"HTTP/1.1 431 ")
    assert b"connection: close" in got


async def test_default_header_count_is_bounded(port: int) -> None:
    many = b"GET / HTTP/1.1\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(10_000)) + b"\r\n"
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(many)
        assert (await _read_all(stream)).startswith(b"HTTP/1.1 431 ")


async def test_head_size_limit_before_the_head_ends(nursery: trio.Nursery) -> None:
    """A header value that never ends is refused once the head passes the limit."""
    _, port = await _limited(nursery, max_head_bytes=4096)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nx-big: ")
        with contextlib.suppress(trio.BrokenResourceError):
            for _ in range(64):  # at most 4 MiB; the server answers after the first 4 KiB
                await stream.send_all(b"a" * 65536)
        assert (await _read_all(stream)).startswith(b"HTTP/1.1 431 ")


async def test_head_timeout(nursery: trio.Nursery) -> None:
    _, port = await _limited(nursery, head_timeout_s=0.3)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: h\r\n")
        assert (await _read_all(stream)).startswith(b"HTTP/1.1 408 ")


async def test_head_timeout_leaves_idle_keep_alive_alone(nursery: trio.Nursery) -> None:
    _, port = await _limited(nursery, head_timeout_s=0.3)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        for _ in range(2):
            await stream.send_all(b"GET /a HTTP/1.1\r\nhost: h\r\n\r\n")
            with trio.fail_after(5):
                assert b"200 OK" in await stream.receive_some(65536)
            await trio.sleep(0.5)  # idle between requests: not a slow head


async def test_silent_connection_closed_after_first_byte_timeout(nursery: trio.Nursery) -> None:
    server, port = await _limited(nursery, first_byte_timeout_s=0.3)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        assert await _read_all(stream) == b""
    assert server.events == ["first_byte_timeout"]  # type: ignore[attr-defined]


async def test_connection_cap(nursery: trio.Nursery) -> None:
    server, port = await _limited(nursery, max_connections=1)
    first = await trio.open_tcp_stream("127.0.0.1", port)
    async with first:
        await first.send_all(b"GET /a HTTP/1.1\r\nhost: h\r\n\r\n")
        with trio.fail_after(5):
            assert b"200 OK" in await first.receive_some(65536)
        second = await trio.open_tcp_stream("127.0.0.1", port)
        async with second:
            assert await _read_all(second) == b""
        await first.send_all(b"GET /b HTTP/1.1\r\nhost: h\r\n\r\n")
        with trio.fail_after(5):
            assert b"200 OK" in await first.receive_some(65536)
    assert server.events == ["over_limit"]  # type: ignore[attr-defined]


def test_limits_validated() -> None:
    with pytest.raises(ValueError, match="max_headers"):
        ServerLimits(max_headers=0)
    with pytest.raises(ValueError, match="max_connections"):
        ServerLimits(max_connections=0)


async def refusing_app(
    scope: Scope, receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
) -> None:
    """Answers 401 without reading the body (as controld's API gate does without a token)."""
    await send({"type": "http.response.start", "status": 401, "headers": []})
    await send({"type": "http.response.body", "body": b"no"})


async def test_a_body_still_arriving_is_read_only_if_the_app_asks(nursery: trio.Nursery) -> None:
    """The app runs once the head is complete: one that answers without reading the body
    gets its answer out before the body is sent; one that reads it gets all of it."""
    refusing = HTTPServer(refusing_app, "127.0.0.1", 0)
    port = await nursery.start(refusing.run)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"PUT /k HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n")
        got = b""
        with trio.fail_after(5):
            while b"\r\n\r\nno" not in got:
                chunk = await stream.receive_some(65536)
                assert chunk, got
                got += chunk
        assert got.startswith(b"HTTP/1.1 401") and b"connection: close" in got
    echo_port = await nursery.start(HTTPServer(echo_app, "127.0.0.1", 0).run)
    stream = await trio.open_tcp_stream("127.0.0.1", echo_port)
    async with stream:
        await stream.send_all(b"PUT /k HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n")
        await trio.sleep(0.05)
        await stream.send_all(b"hello")
        await trio.sleep(0.05)
        await stream.send_all(b"world")
        got = b""
        with trio.fail_after(5):
            while b"helloworld" not in got:
                chunk = await stream.receive_some(65536)
                assert chunk, got
                got += chunk
        assert got.startswith(b"HTTP/1.1 200") and b"connection: close" in got
