"""Strict HTTP/1.1 and message limits, checked by what reaches the backend.

Requests go through real sidecars to a real app (hypercorn, :class:`helpers.TestApp`) or to a
:class:`Recorder`, a raw upstream that keeps every request head it receives byte for byte: a
refused request must never reach it, a passed one must reach it as the test says.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from helpers import (
    TIMEOUT,
    RawClient,
    RawServer,
    SidecarProcess,
    TestApp,
    app_headers,
    closed_port,
    cluster,
    open_chain,
    read_head,
    request,
    start_inbound,
    start_outbound,
    write_sidecar_config,
)
from mtls_ca import make_ca, spiffe
from test_mtls import exchange, mtls_client, start_api

pytestmark = pytest.mark.timeout(60)

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class Recorder(RawServer):
    """An upstream that records each request head it reads and answers ``200 ok``."""

    def __init__(self) -> None:
        super().__init__(self._serve)
        self.heads: list[bytes] = []

    async def _serve(self, stream: trio.SocketStream) -> None:
        buf = bytearray()
        while True:
            head = await read_head(stream, buf)
            if not head:
                return
            self.heads.append(head)
            await stream.send_all(OK)

    def header(self, index: int, name: str) -> list[bytes]:
        """Values of header ``name`` in the ``index``-th recorded head."""
        lines = self.heads[index].split(b"\r\n")[1:]
        wanted = name.encode().lower()
        return [
            line.partition(b":")[2].strip()
            for line in lines
            if line.partition(b":")[0].strip().lower() == wanted
        ]


@pytest.fixture
async def recorder(nursery: trio.Nursery) -> Recorder:
    server = Recorder()
    await nursery.start(server.run)
    return server


# -- Host and HTTP versions --------------------------------------------------------------------

BAD_HOSTS = {
    "userinfo": b"user:pw@api.test",
    "space": b"api .test",
    "dot_dot_segment": b"api.test/../admin",
    "slash": b"api.test/x",
    "dot_dot_label": b"..",
    "empty": b"",
    "bad_port": b"api.test:99999",
    "ipv6_unbracketed_junk": b"[::1",
}
BAD_VERSIONS = {
    "http09_then_blank_line": b"GET /a\r\n\r\n",
    "http09_with_headers": b"GET /a\r\nHost: api.test\r\n\r\n",
    "http2_request_line": b"GET /a HTTP/2.0\r\nHost: api.test\r\n\r\n",
    "http09_spelled_out": b"GET /a HTTP/0.9\r\nHost: api.test\r\n\r\n",
}
REFUSED = [
    *(
        (f"host_{name}", b"GET /a HTTP/1.1\r\nHost: " + host + b"\r\n\r\n", 400, "invalid_host")
        for name, host in BAD_HOSTS.items()
    ),
    *(
        (f"version_{name}", wire, 505, "unsupported_http_version")
        for name, wire in BAD_VERSIONS.items()
    ),
]


@pytest.mark.parametrize(
    ("wire", "status", "reason"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
async def test_refused_and_never_forwarded(
    nursery: trio.Nursery,
    tmp_path: Path,
    recorder: Recorder,
    wire: bytes,
    status: int,
    reason: str,
) -> None:
    _, port = await start_outbound(nursery, tmp_path, recorder.port)
    async with RawClient.connect(port) as client:
        await client.send(wire)
        resp = await client.read_response()
        assert (resp.status, resp.header("x-meshd-error")) == (status, reason)
        await client.wait_closed()
    assert recorder.heads == []


async def test_absolute_form_with_userinfo_refused(
    nursery: trio.Nursery, tmp_path: Path, recorder: Recorder
) -> None:
    _, port = await start_outbound(nursery, tmp_path, recorder.port)
    async with RawClient.connect(port) as client:
        await client.send(b"GET http://user@api.test/a HTTP/1.1\r\nHost: api.test\r\n\r\n")
        resp = await client.read_response()
        assert (resp.status, resp.header("x-meshd-error")) == (400, "invalid_host")
    assert recorder.heads == []


async def test_valid_hosts_pass(nursery: trio.Nursery, tmp_path: Path, recorder: Recorder) -> None:
    _, port = await start_outbound(nursery, tmp_path, recorder.port)
    hosts = [b"api.test", b"api.test:8080", b"127.0.0.1:80", b"[::1]:8080", b"api.test."]
    async with RawClient.connect(port) as client:
        for host in hosts:
            await client.send(b"GET /a HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            assert (await client.read_response()).status == 200
        await client.send(b"GET http://api.test:81?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await client.read_response()).status == 200
    assert [recorder.header(i, "host") for i in range(len(hosts))] == [[h] for h in hosts]
    assert recorder.heads[-1].startswith(b"GET /?q=1 HTTP/1.1\r\n")
    assert recorder.header(len(hosts), "host") == [b"api.test:81"]


# -- Connection tokens ----------------------------------------------------------------------------


async def test_connection_cannot_strip_host_or_mesh_headers(
    nursery: trio.Nursery, tmp_path: Path, recorder: Recorder
) -> None:
    """``Connection: host`` (and framing, tracing names) is ignored; other names still go."""
    _, port = await start_outbound(nursery, tmp_path, recorder.port)
    async with RawClient.connect(port) as client:
        await client.send(
            b"POST /a HTTP/1.1\r\nHost: api.test\r\n"
            b"Connection: host, content-length, x-request-id, traceparent, x-hop\r\n"
            b"X-Request-Id: rid-1\r\nX-Hop: gone\r\nContent-Length: 3\r\n\r\nabc"
        )
        resp = await client.read_response()
    assert resp.status == 200
    assert recorder.header(0, "host") == [b"api.test"]
    assert recorder.header(0, "content-length") == [b"3"]
    assert recorder.header(0, "x-request-id") == [b"rid-1"]
    assert len(recorder.header(0, "traceparent")) == 1
    assert recorder.header(0, "x-hop") == []
    assert recorder.heads[0].startswith(b"POST /a HTTP/1.1\r\n")


async def test_connection_host_through_a_chain_reaches_the_app(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    chain = await open_chain(nursery, tmp_path, app.port)
    async with RawClient.connect(chain.port) as client:
        await client.send(request("GET", "/echo", headers=[("Connection", "host")]))
        resp = await client.read_response()
    assert resp.status == 200, resp.body
    assert app_headers(resp.json())["host"] == ["api.test"]


# -- versions -------------------------------------------------------------------------------------


async def test_http09_request_line_alone_answered_at_once(
    nursery: trio.Nursery, tmp_path: Path, recorder: Recorder
) -> None:
    """An HTTP/0.9 client sends one line and waits: it is refused then, not after a timeout."""
    _, port = await start_outbound(
        nursery, tmp_path, recorder.port, request_headers_timeout_s=3 * TIMEOUT
    )
    async with RawClient.connect(port) as client:
        await client.send(b"GET /a\r\n")
        resp = await client.read_response()
    assert (resp.status, resp.header("x-meshd-error")) == (505, "unsupported_http_version")
    assert recorder.heads == []


# -- mesh-internal headers --------------------------------------------------------------------


async def test_client_mesh_headers_never_reach_the_app_without_mtls(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    """mTLS off: a client can't make the app believe a peer identity (or any x-meshd-*)."""
    _, port = await start_inbound(nursery, tmp_path, app.port)
    spoofed = [
        ("X-Meshd-Peer-Identity", "spiffe://mesh.local/ns/default/svc/payments"),
        ("x-meshd-anything", "1"),
    ]
    async with RawClient.connect(port) as client:
        await client.send(request("GET", "/echo", headers=spoofed))
        resp = await client.read_response()
    assert resp.status == 200
    seen = app_headers(resp.json())
    assert not [name for name in seen if name.startswith("x-meshd-")], seen


async def test_client_mesh_headers_dropped_through_a_chain(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    chain = await open_chain(nursery, tmp_path, app.port)
    async with RawClient.connect(chain.port) as client:
        await client.send(
            request("GET", "/echo", headers=[("X-Meshd-Peer-Identity", "spiffe://evil")])
        )
        resp = await client.read_response()
    assert "x-meshd-peer-identity" not in app_headers(resp.json())


async def test_mtls_strict_rules_and_only_the_verified_identity(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    """Over mTLS: the same Host check, and the app sees only the identity the handshake proved."""
    ca = make_ca()
    api = await start_api(nursery, tmp_path / "api", ca, app.port, "strict")
    port = api.listeners.slots["inbound"].port
    async with mtls_client(port, ca, ca.service("web")) as stream:
        answer = await exchange(
            stream,
            request(
                "GET",
                "/echo",
                headers=[("Connection", "host"), ("X-Meshd-Peer-Identity", "spiffe://evil")],
            ),
        )
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    seen = app_headers(json.loads(answer.partition(b"\r\n\r\n")[2]))
    assert seen["host"] == ["api.test"]
    assert seen["x-meshd-peer-identity"] == [spiffe("web")]
    async with mtls_client(port, ca, ca.service("web")) as stream:
        answer = await exchange(stream, request("GET", "/echo", host="user@api.test"))
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"x-meshd-error: invalid_host" in answer
    assert app.requests == 1


# -- 101 only after an Upgrade ----------------------------------------------------------------


async def test_unrequested_101_is_502_and_no_tunnel(nursery: trio.Nursery, tmp_path: Path) -> None:
    upstream_saw_close = trio.Event()

    async def switcher(stream: trio.SocketStream) -> None:
        if not await read_head(stream):
            return
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw\r\nConnection: upgrade\r\n\r\n"
            b"TUNNEL-BYTES"
        )
        with trio.fail_after(TIMEOUT):
            while True:
                try:
                    if not await stream.receive_some(65536):
                        break
                except trio.BrokenResourceError:
                    break
        upstream_saw_close.set()

    upstream = RawServer(switcher)
    await nursery.start(upstream.run)
    _, port = await start_outbound(nursery, tmp_path, upstream.port)
    async with RawClient.connect(port) as client:
        await client.send(request("GET", "/plain"))
        resp = await client.read_response()
        assert (resp.status, resp.header("x-meshd-error")) == (502, "upstream_unexpected_upgrade")
        assert resp.header("connection") == "close"
        rest, _ = await client.read_until_closed()
    assert b"TUNNEL-BYTES" not in resp.body + rest
    with trio.fail_after(TIMEOUT):
        await upstream_saw_close.wait()  # the upstream connection was closed, not pooled


# -- limits ---------------------------------------------------------------------------------------


async def test_ten_thousand_tiny_headers_431(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    _, port = await start_inbound(nursery, tmp_path, app.port)
    head = b"GET /echo HTTP/1.1\r\nHost: api.test\r\n" + b"a: b\r\n" * 10_000 + b"\r\n"
    assert len(head) < 60 * 1024  # under the size limit: the count is what stops it
    async with RawClient.connect(port) as client:
        await client.send(head)
        resp = await client.read_response()
        assert (resp.status, resp.header("x-meshd-error")) == (431, "too_many_headers")
        assert resp.header("connection") == "close"
    assert app.requests == 0


async def test_header_count_limit_is_configurable(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    _, port = await start_inbound(nursery, tmp_path, app.port, max_request_header_count=5)
    extra = [(f"x-h{i}", "v") for i in range(4)]  # 4 + Host = 5 fields: the limit
    async with RawClient.connect(port) as client:
        await client.send(request("GET", "/echo/five", headers=extra))
        assert (await client.read_response()).status == 200
        await client.send(request("GET", "/echo/six", headers=[*extra, ("x-h5", "v")]))
        resp = await client.read_response()
    assert (resp.status, resp.header("x-meshd-error")) == (431, "too_many_headers")
    assert app.paths == ["/echo/five"]


class HugeHead:
    """Upstream: the first connection gets a response head that never ends; later ones ``ok``.

    ``sent`` counts the bytes of the endless head the proxy took before it closed.
    """

    TOTAL = 80 * 1024 * 1024

    def __init__(self, start: bytes, filler: bytes) -> None:
        self.start = start
        self.filler = filler
        self.sent = 0
        self.closed = trio.Event()
        self.server = RawServer(self._serve)

    async def _serve(self, stream: trio.SocketStream) -> None:
        first = self.server.connections == 1
        buf = bytearray()
        while await read_head(stream, buf):
            if not first:
                await stream.send_all(OK)
                continue
            try:
                await stream.send_all(b"HTTP/1.1 200 OK\r\n" + self.start)
                piece = self.filler * (65536 // len(self.filler))
                with trio.fail_after(TIMEOUT):
                    while self.sent < self.TOTAL:
                        await stream.send_all(piece)
                        self.sent += len(piece)
            finally:
                self.closed.set()
            return


@pytest.mark.parametrize(
    ("start", "filler"),
    [(b"x-big: ", b"v"), (b"", b"a: b\r\n")],
    ids=["one_endless_header", "endless_header_count"],
)
async def test_oversized_upstream_response_head(
    nursery: trio.Nursery, tmp_path: Path, start: bytes, filler: bytes
) -> None:
    """502 long before the 80 MiB are read; the connection is dropped, the next one works."""
    upstream = HugeHead(start, filler)
    await nursery.start(upstream.server.run)
    sidecar, port = await start_outbound(nursery, tmp_path, upstream.server.port)
    async with RawClient.connect(port) as client:
        await client.send(request("GET", "/huge"))
        resp = await client.read_response()
        assert (resp.status, resp.header("x-meshd-error")) == (
            502,
            "upstream_response_headers_too_large",
        )
        with trio.fail_after(TIMEOUT):
            await upstream.closed.wait()
        # The proxy stopped reading at the limit: what it took is bounded by the limit plus
        # socket buffers, a small part of what the upstream wanted to send.
        assert upstream.sent < 16 * 1024 * 1024
        await client.send(request("GET", "/after"))
        assert (await client.read_response()).status == 200
    assert upstream.server.connections == 2  # a fresh connection: the bad one was not pooled
    assert any(
        k.endswith("upstream_errors.upstream_response_headers_too_large")
        for k in sidecar.stats_info()
    )


async def test_response_head_limits_are_configurable(nursery: trio.Nursery, tmp_path: Path) -> None:
    upstream = RawServer(
        lambda stream: _answer_each(
            stream, b"HTTP/1.1 200 OK\r\n" + b"x-f: 1\r\n" * 8 + b"content-length: 0\r\n\r\n"
        )
    )
    await nursery.start(upstream.run)
    _, port = await start_outbound(
        nursery, tmp_path, upstream.port, max_response_header_count=8, max_response_headers_kb=1
    )
    async with RawClient.connect(port) as client:
        await client.send(request("GET", "/nine-fields"))
        resp = await client.read_response()
    assert (resp.status, resp.header("x-meshd-error")) == (
        502,
        "upstream_response_headers_too_large",
    )


async def _answer_each(stream: trio.SocketStream, response: bytes) -> None:
    buf = bytearray()
    while await read_head(stream, buf):
        await stream.send_all(response)


async def test_requests_per_connection_limit(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    _, port = await start_inbound(nursery, tmp_path, app.port, max_requests_per_connection=3)
    async with RawClient.connect(port) as client:
        for i in range(2):
            await client.send(request("GET", f"/echo/{i}"))
            resp = await client.read_response()
            assert resp.status == 200
            assert resp.header("connection") is None
        await client.send(request("GET", "/echo/2"))
        resp = await client.read_response()
        assert resp.status == 200
        assert resp.header("connection") == "close"
        await client.wait_closed()
    # Pipelined past the limit: the fourth request is never read, let alone forwarded.
    async with RawClient.connect(port) as client:
        await client.send(b"".join(request("GET", f"/echo/p{i}") for i in range(4)))
        statuses = [(await client.read_response()).status for _ in range(3)]
        await client.wait_closed()
    assert statuses == [200, 200, 200]
    assert app.paths == [f"/echo/{i}" for i in range(3)] + [f"/echo/p{i}" for i in range(3)]


async def test_oversized_upstream_head_keeps_memory_bounded(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A sidecar process's peak memory barely moves while an upstream pushes an 80 MiB header."""
    upstream = HugeHead(b"x-big: ", b"v")
    await nursery.start(upstream.server.run)
    sidecar = SidecarProcess(
        write_sidecar_config(
            tmp_path,
            service="web",
            app_port=closed_port(),
            listeners=[
                {"name": "out", "direction": "outbound", "address": "127.0.0.1:0", "cluster": "up"}
            ],
            clusters=[cluster("up", upstream.server.port)],
        )
    )
    await sidecar.start()
    try:
        before = sidecar.status()["VmHWM"]
        async with RawClient.connect(sidecar.port()) as client:
            await client.send(request("GET", "/huge"))
            resp = await client.read_response(timeout=3 * TIMEOUT)
        assert resp.header("x-meshd-error") == "upstream_response_headers_too_large"
        with trio.fail_after(TIMEOUT):
            await upstream.closed.wait()
        growth_kb = sidecar.status()["VmHWM"] - before
    finally:
        await sidecar.stop()
    assert growth_kb < 16 * 1024, growth_kb  # today's unbounded parse took ~245 MB
    assert upstream.sent < 16 * 1024 * 1024
