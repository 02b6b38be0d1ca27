"""meshd.control.client against a real HTTP server (hypercorn) and scripted raw servers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshcore.errors import ConfigError
from meshcore.runtime.asgi import AsgiServer
from meshd.control.client import (
    ControlClient,
    ControlProtocolError,
    ControlUnavailable,
    path_segment,
)

TOKEN = "sidecar.web.abc"


class Seen:
    """What the test server saw: one (client port, method, path, query, auth) per request."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, str, str, str, str | None]] = []


def _app(seen: Seen) -> Starlette:
    async def echo(request: Request) -> Response:
        client = request.client
        seen.requests.append(
            (
                client.port if client else 0,
                request.method,
                request.url.path,
                request.url.query,
                request.headers.get("authorization"),
            )
        )
        body = await request.body()
        return JSONResponse(
            {"path": request.url.path, "query": dict(request.query_params), "body": body.decode()}
        )

    async def status(request: Request) -> Response:
        code = int(request.path_params["code"])
        if code == 304:
            return Response(status_code=304)
        return JSONResponse({"error": f"status {code}"}, status_code=code)

    async def slow(_: Request) -> Response:
        await trio.sleep(5)
        return Response(status_code=304)

    return Starlette(
        routes=[
            Route("/status/{code}", status),
            Route("/slow", slow),
            Route("/{rest:path}", echo, methods=["GET", "POST"]),
        ]
    )


@pytest.fixture
async def served(nursery: trio.Nursery) -> tuple[Seen, int]:
    seen = Seen()
    server = AsgiServer(
        _app(seen),
        "127.0.0.1",
        0,
        error_logger=logging.getLogger("test-control-client"),
        keep_alive_timeout=0.3,
    )
    port: int = await nursery.start(server.run)
    return seen, port


@pytest.fixture
def client(served: tuple[Seen, int]) -> ControlClient:
    return ControlClient(f"http://127.0.0.1:{served[1]}", token=TOKEN, timeout_s=2)


async def test_get_with_query_and_token(served: tuple[Seen, int], client: ControlClient) -> None:
    seen, _ = served
    answer = await client.get("/v1/snapshots/p1", {"version": 3, "hash": "ab", "wait": "30"})
    assert answer.status == 200
    assert answer.json()["query"] == {"version": "3", "hash": "ab", "wait": "30"}
    assert seen.requests[0][4] == f"Bearer {TOKEN}"
    assert answer.headers["content-type"] == "application/json"
    client.close()


async def test_post_json_and_keep_alive(served: tuple[Seen, int], client: ControlClient) -> None:
    seen, _ = served
    first = await client.post_json("/v1/proxies/p1", {"proxy_id": "p1"})
    assert first.json()["body"] == '{"proxy_id":"p1"}'
    for _ in range(3):
        assert (await client.get("/again")).status == 200
    # One connection for all four requests.
    assert len({r[0] for r in seen.requests}) == 1
    await client.aclose()


async def test_reconnects_after_the_server_closed_an_idle_connection(
    served: tuple[Seen, int], client: ControlClient
) -> None:
    seen, _ = served
    await client.get("/one")
    await trio.sleep(0.8)  # past the server's keep-alive timeout: it closes the connection
    assert (await client.get("/two")).status == 200
    assert len({r[0] for r in seen.requests}) == 2
    client.close()


async def test_statuses_are_returned(client: ControlClient) -> None:
    not_modified = await client.get("/status/304")
    assert (not_modified.status, not_modified.body) == (304, b"")
    missing = await client.get("/status/404")
    assert missing.status == 404
    assert missing.error_text() == "HTTP 404: status 404"
    client.close()


async def test_timeout_is_unavailable(served: tuple[Seen, int]) -> None:
    client = ControlClient(f"http://127.0.0.1:{served[1]}", timeout_s=0.2)
    with pytest.raises(ControlUnavailable, match="no answer"):
        await client.get("/slow")
    # The connection was dropped; the next request works on a new one.
    assert (await client.get("/after")).status == 200
    client.close()


async def test_connection_refused_is_unavailable() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ControlClient(f"http://127.0.0.1:{port}", timeout_s=2)
    with pytest.raises(ControlUnavailable, match="cannot connect"):
        await client.get("/")


def test_https_and_bad_urls_are_refused() -> None:
    with pytest.raises(ConfigError, match="https needs an identity"):
        ControlClient("https://127.0.0.1:8501")
    with pytest.raises(ConfigError, match="expected http"):
        ControlClient("ftp://127.0.0.1:8501")
    with pytest.raises(ConfigError, match="line breaks"):
        ControlClient("http://127.0.0.1:8501", token="a\r\nb")


def test_path_segment() -> None:
    assert path_segment("web-1:a/b") == "web-1%3Aa%2Fb"


Script = Callable[[trio.SocketStream], Awaitable[None]]


async def _raw(nursery: trio.Nursery, script: Script) -> int:
    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            await script(stream)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, handler, listeners)
    return int(listeners[0].socket.getsockname()[1])


async def test_garbage_is_a_protocol_error(nursery: trio.Nursery) -> None:
    async def junk(stream: trio.SocketStream) -> None:
        await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")

    client = ControlClient(f"http://127.0.0.1:{await _raw(nursery, junk)}", timeout_s=2)
    with pytest.raises(ControlProtocolError, match="bad HTTP"):
        await client.get("/")
    client.close()


async def test_close_mid_answer_is_unavailable(nursery: trio.Nursery) -> None:
    async def short(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")

    client = ControlClient(f"http://127.0.0.1:{await _raw(nursery, short)}", timeout_s=2)
    with pytest.raises(ControlUnavailable, match="mid-answer"):
        await client.get("/")
    client.close()


async def test_close_before_answer_is_unavailable(nursery: trio.Nursery) -> None:
    async def nothing(stream: trio.SocketStream) -> None:
        return

    client = ControlClient(f"http://127.0.0.1:{await _raw(nursery, nothing)}", timeout_s=2)
    with pytest.raises(ControlUnavailable, match="closed before an answer"):
        await client.get("/")
    client.close()


async def test_json_errors(nursery: trio.Nursery) -> None:
    async def text(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 500 Oops\r\ncontent-length: 4\r\n\r\nboom")

    client = ControlClient(f"http://127.0.0.1:{await _raw(nursery, text)}", timeout_s=2)
    answer = await client.get("/")
    assert answer.error_text() == "HTTP 500: boom"
    with pytest.raises(ControlProtocolError, match="not JSON"):
        answer.json()
    client.close()
