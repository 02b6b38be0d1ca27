"""The HTTP/1.1 proxy over real sockets: client -> outbound sidecar -> inbound sidecar -> app.

The app is hypercorn serving :class:`helpers.TestApp`; misbehaving upstreams are
:class:`helpers.RawServer` scripts. Every read is bounded, so a broken proxy fails, never hangs.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path

import pytest
import trio
import yaml
from helpers import (
    TIMEOUT,
    Chain,
    RawClient,
    RawServer,
    TestApp,
    admin_get,
    app_headers,
    canned,
    closed_port,
    pattern,
    pattern_sha256,
    read_head,
    request,
    start_outbound,
)
from prometheus_client.parser import text_string_to_metric_families

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
#: 32 hex digits (nginx's $request_id form) or a UUID.
REQUEST_ID = re.compile(
    r"^(?:[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$"
)
HOP_BY_HOP = ("x-hop", "keep-alive", "te", "proxy-connection", "transfer-encoding", "upgrade")


# -- 1. headers through both sidecars ---------------------------------------------------------


async def test_request_headers_through_outbound_and_inbound(chain: Chain, app: TestApp) -> None:
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with RawClient.connect(chain.port) as client:
        await client.send(
            request(
                "GET",
                "/echo?x=1",
                host="api.test:8080",
                headers=[
                    ("Connection", "keep-alive, X-Hop"),
                    ("X-Hop", "must not pass"),
                    ("Keep-Alive", "timeout=5"),
                    ("TE", "trailers"),
                    ("Proxy-Connection", "keep-alive"),
                    ("X-Custom", "kept"),
                    ("traceparent", incoming),
                    ("X-Request-Id", "req-123"),
                    ("X-Forwarded-For", "203.0.113.9"),
                ],
            )
        )
        resp = await client.read_response()
    assert resp.status == 200
    echo = resp.json()
    assert (echo["method"], echo["path"], echo["query"]) == ("GET", "/echo", "x=1")
    seen = app_headers(echo)
    assert seen["host"] == ["api.test:8080"]
    assert seen["x-custom"] == ["kept"]
    for name in HOP_BY_HOP:
        assert name not in seen, (name, seen)
    assert "x-hop" not in ",".join(seen.get("connection", [])).lower()
    assert seen["x-request-id"] == ["req-123"]
    # Each hop appends the address it got the request from.
    assert seen["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1, 127.0.0.1"]
    [traceparent] = seen["traceparent"]
    m = TRACEPARENT.match(traceparent)
    assert m is not None, traceparent
    assert m.group(1) == "0af7651916cd43dd8448eb211c80319c"
    assert m.group(2) != "b7ad6b7169203331"
    assert m.group(3) == "01"
    assert app.requests == 1


async def test_request_id_and_traceparent_generated_when_missing(
    chain: Chain, app: TestApp
) -> None:
    async with RawClient.connect(chain.port) as client:
        seen = []
        for _ in range(2):
            await client.send(request("GET", "/echo"))
            resp = await client.read_response()
            assert resp.status == 200
            seen.append(app_headers(resp.json()))
    ids = []
    for headers in seen:
        [request_id] = headers["x-request-id"]
        assert REQUEST_ID.match(request_id), request_id
        ids.append(request_id)
        [traceparent] = headers["traceparent"]
        m = TRACEPARENT.match(traceparent)
        assert m is not None, traceparent
        assert m.group(1) != "0" * 32 and m.group(2) != "0" * 16
        assert headers["x-forwarded-for"] == ["127.0.0.1, 127.0.0.1"]
        assert headers["host"] == ["api.test"]
    assert ids[0] != ids[1]


async def test_invalid_traceparent_starts_new_trace(chain: Chain) -> None:
    async with RawClient.connect(chain.port) as client:
        await client.send(request("GET", "/echo", headers=[("traceparent", "00-zz-bad-01")]))
        resp = await client.read_response()
    [traceparent] = app_headers(resp.json())["traceparent"]
    assert TRACEPARENT.match(traceparent), traceparent


# -- 2. keep-alive and pipelining -------------------------------------------------------------


async def test_keep_alive_reuses_one_upstream_connection(chain: Chain, app: TestApp) -> None:
    async with RawClient.connect(chain.port) as client:
        for i in range(20):
            await client.send(request("GET", f"/echo/{i}"))
            resp = await client.read_response()
            assert resp.status == 200
            assert resp.json()["path"] == f"/echo/{i}"
            assert resp.header("connection") != "close"
    # A second client connection finds the pooled upstream connections too.
    async with RawClient.connect(chain.port) as client:
        await client.send(request("GET", "/echo/again"))
        assert (await client.read_response()).status == 200
    assert chain.endpoint_created(chain.outbound, "api") == 1
    assert chain.endpoint_created(chain.inbound, "local_app") == 1
    clusters = (await admin_get(chain.outbound, "/clusters")).json()
    [api] = [c for c in clusters if c["name"] == "api"]
    assert api["endpoints"][0]["created"] == 1
    assert app.requests == 21


async def test_keep_alive_connection_follows_a_new_snapshot(chain: Chain, tmp_path: Path) -> None:
    """A snapshot's routes apply to the next request of an open connection (a pooled client
    sees a traffic shift at once); the connection itself stays up."""
    snapshot_path = tmp_path / "web" / "snapshot.yaml"
    snapshot = yaml.safe_load(snapshot_path.read_text())
    async with RawClient.connect(chain.port) as client:
        await client.send(request("GET", "/echo/before"))
        assert (await client.read_response()).status == 200
        snapshot["version"] = 2
        snapshot["listeners"][0].pop("cluster")
        snapshot["listeners"][0]["route_table"] = "main"
        snapshot["route_tables"] = [
            {"name": "main", "routes": [{"name": "moved", "redirect": {"host": "moved.test"}}]}
        ]
        snapshot_path.write_text(yaml.safe_dump(snapshot))
        assert chain.outbound.reload()
        await client.send(request("GET", "/echo/after"))
        resp = await client.read_response()
        assert resp.status == 302
        assert resp.header("location") == "http://moved.test/echo/after"


async def test_pipelined_requests_answered_in_order(chain: Chain, app: TestApp) -> None:
    async with RawClient.connect(chain.port) as client:
        await client.send(
            request("GET", "/echo/one")
            + request("POST", "/echo/two", body=b"x" * 1000)
            + request("HEAD", "/echo/three")
            + request("GET", "/status/204")
            + request("GET", "/echo/five")
        )
        one = await client.read_response()
        two = await client.read_response()
        three = await client.read_response(head_request=True)
        four = await client.read_response()
        five = await client.read_response()
    assert one.json()["path"] == "/echo/one"
    assert (two.json()["path"], two.json()["body_len"]) == ("/echo/two", 1000)
    assert three.status == 200 and int(three.header("content-length") or 0) > 0
    assert four.status == 204
    assert five.json()["path"] == "/echo/five"
    assert app.paths == ["/echo/one", "/echo/two", "/echo/three", "/status/204", "/echo/five"]


# -- 3. HEAD, 204, 304, 1xx -------------------------------------------------------------------


async def test_head_response_has_length_but_no_body(chain: Chain) -> None:
    async with RawClient.connect(chain.port) as client:
        await client.send(request("GET", "/status/200"))
        get = await client.read_response()
        await client.send(request("HEAD", "/status/200"))
        head = await client.read_response(head_request=True)
        assert head.status == 200
        assert head.header("content-length") == get.header("content-length") != "0"
        assert head.header("transfer-encoding") is None
        # Had the proxy sent a body, it would be read here as the next response's start.
        await client.send(request("GET", "/echo/after"))
        after = await client.read_response()
    assert after.status == 200
    assert after.json()["path"] == "/echo/after"


async def test_no_body_statuses_keep_the_connection_usable(chain: Chain) -> None:
    async with RawClient.connect(chain.port) as client:
        for code in (204, 304, 204):
            await client.send(request("GET", f"/status/{code}"))
            resp = await client.read_response()
            assert resp.status == code
            assert resp.header("transfer-encoding") is None
            assert resp.header("content-length") in (None, "0")
        await client.send(request("GET", "/echo/after"))
        assert (await client.read_response()).json()["path"] == "/echo/after"


async def test_expect_100_continue(chain: Chain, app: TestApp) -> None:
    body = bytes(range(256)) * 40
    async with RawClient.connect(chain.port) as client:
        await client.send(
            request(
                "POST",
                "/upload",
                headers=[("Expect", "100-continue"), ("Content-Length", str(len(body)))],
            )
        )
        interim = await client.read_head(skip_interim=False)
        assert interim.status == 100
        # Nothing of the body was sent before the 100: the app is still waiting for it.
        assert app.upload_progress == 0
        await client.send(body)
        resp = await client.read_response()
        assert resp.status == 200
        assert resp.json() == {"count": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        await client.send(request("GET", "/echo/after"))
        assert (await client.read_response()).json()["path"] == "/echo/after"


async def test_unprompted_100_continue_is_relayed(nursery: trio.Nursery, tmp_path: Path) -> None:
    upstream = RawServer(
        canned(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        )
    )
    await nursery.start(upstream.run)
    _, port = await start_outbound(nursery, tmp_path, upstream.port)
    async with RawClient.connect(port) as client:
        await client.send(request("GET", "/"))
        first = await client.read_head(skip_interim=False)
        assert first.status == 100
        second = await client.read_head(skip_interim=False)
        assert second.status == 103
        assert second.header("link") == "</style.css>; rel=preload"
        final = await client.read_head()
        assert final.status == 200
        body = b"".join([p async for p in client.body_pieces(final)])
        assert body == b"ok"
    # An HTTP/1.0 client can't take 1xx responses: it gets the final one only.
    async with RawClient.connect(port) as client:
        await client.send(request("GET", "/", host="", version="HTTP/1.0"))
        data, _ = await client.read_until_closed()
    assert data.startswith(b"HTTP/1.1 200 "), data
    assert data.endswith(b"\r\n\r\nok")


# -- 4. framing -------------------------------------------------------------------------------


async def test_chunked_request_body(chain: Chain) -> None:
    pieces = [b"a" * 1, b"b" * 1000, b"c" * 70000, b"d" * 17]
    wire = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    async with RawClient.connect(chain.port) as client:
        await client.send(request("POST", "/upload", headers=[("Transfer-Encoding", "chunked")]))
        for i in range(0, len(wire), 4096):
            await client.send(wire[i : i + 4096])
        resp = await client.read_response()
        body = b"".join(pieces)
        assert resp.json() == {"count": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        await client.send(request("GET", "/echo/after"))
        assert (await client.read_response()).json()["path"] == "/echo/after"


async def test_content_length_request_body(chain: Chain) -> None:
    body = b"".join(pattern(300_000))
    async with RawClient.connect(chain.port) as client:
        await client.send(request("PUT", "/upload", body=body))
        resp = await client.read_response()
    assert resp.json() == {"count": len(body), "sha256": pattern_sha256(300_000)}


async def test_chunked_response_body(chain: Chain) -> None:
    size = 300_001
    async with RawClient.connect(chain.port) as client:
        await client.send(request("GET", f"/stream?size={size}&piece=10000"))
        resp = await client.read_response()
        assert resp.status == 200
        assert resp.header("transfer-encoding") == "chunked"
        assert resp.header("content-length") is None
        assert len(resp.body) == size
        assert hashlib.sha256(resp.body).hexdigest() == pattern_sha256(size, 10000)
        await client.send(request("GET", "/echo/after"))
        assert (await client.read_response()).json()["path"] == "/echo/after"


async def test_content_length_response_body(chain: Chain) -> None:
    async with RawClient.connect(chain.port) as client:
        await client.send(request("GET", "/status/200"))
        resp = await client.read_response()
    assert resp.header("content-length") == str(len(b"status 200"))
    assert resp.header("transfer-encoding") is None
    assert resp.body == b"status 200"


async def test_http10_client_gets_close_delimited_body(chain: Chain) -> None:
    size = 100_000
    async with RawClient.connect(chain.port) as client:
        await client.send(request("GET", f"/stream?size={size}", version="HTTP/1.0"))
        resp = await client.read_head()
        assert resp.status == 200
        assert resp.header("transfer-encoding") is None
        data, how = await client.read_until_closed()
    assert how == "eof"
    assert len(data) == size
    assert hashlib.sha256(data).hexdigest() == pattern_sha256(size)


async def test_http10_client_connection_closes_after_response(chain: Chain) -> None:
    async with RawClient.connect(chain.port) as client:
        await client.send(request("GET", "/echo/ten", version="HTTP/1.0"))
        resp = await client.read_response()
        assert resp.json()["path"] == "/echo/ten"
        assert await client.wait_closed() == "eof"


async def test_http10_request_without_host_is_forwarded(chain: Chain, app: TestApp) -> None:
    """Host is optional in HTTP/1.0; the HTTP/1.1 request sent upstream must still have one."""
    async with RawClient.connect(chain.port) as client:
        await client.send(b"GET /echo/nohost HTTP/1.0\r\n\r\n")
        resp = await client.read_response()
        assert resp.status == 200, resp.raw_head + resp.body
        echo = resp.json()
        assert echo["path"] == "/echo/nohost"
        assert len(app_headers(echo)["host"]) == 1
        assert await client.wait_closed() == "eof"


async def test_http10_keep_alive(chain: Chain) -> None:
    async with RawClient.connect(chain.port) as client:
        for i in range(3):
            await client.send(
                request(
                    "GET", f"/echo/{i}", version="HTTP/1.0", headers=[("Connection", "keep-alive")]
                )
            )
            resp = await client.read_response()
            assert resp.json()["path"] == f"/echo/{i}"
            assert (resp.header("connection") or "").lower() == "keep-alive"


async def test_absolute_form_target(chain: Chain) -> None:
    async with RawClient.connect(chain.port) as client:
        await client.send(request("GET", "http://api.test/echo/abs?q=1", host="api.test"))
        resp = await client.read_response()
    echo = resp.json()
    assert (echo["path"], echo["query"]) == ("/echo/abs", "q=1")


async def test_upstream_body_delimited_by_close_is_rechunked(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    upstream = RawServer(canned(b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * 5000))
    await nursery.start(upstream.run)
    _, port = await start_outbound(nursery, tmp_path, upstream.port)
    async with RawClient.connect(port) as client:
        await client.send(request("GET", "/"))
        resp = await client.read_response()
        assert resp.header("transfer-encoding") == "chunked"
        assert resp.body == b"z" * 5000
        # The upstream connection is gone, the downstream one is still good.
        await client.send(request("GET", "/"))
        assert (await client.read_response()).body == b"z" * 5000


# -- 8. upstream failures ---------------------------------------------------------------------


async def _one_error(port: int, method: str = "GET", target: str = "/") -> tuple[int, str | None]:
    async with RawClient.connect(port) as client:
        await client.send(request(method, target))
        resp = await client.read_response(head_request=method == "HEAD")
    return resp.status, resp.header("x-meshd-error")


async def test_upstream_closes_before_response(nursery: trio.Nursery, tmp_path: Path) -> None:
    upstream = RawServer(canned(b""))
    await nursery.start(upstream.run)
    sidecar, port = await start_outbound(nursery, tmp_path, upstream.port)
    assert await _one_error(port) == (502, "upstream_reset")
    stats = (await admin_get(sidecar, "/stats")).json()
    assert stats["cluster.up.upstream_errors.upstream_reset"] >= 1


async def test_upstream_resets_before_response(nursery: trio.Nursery, tmp_path: Path) -> None:
    upstream = RawServer(canned(b"", then="reset"))
    await nursery.start(upstream.run)
    _, port = await start_outbound(nursery, tmp_path, upstream.port)
    assert await _one_error(port) == (502, "upstream_reset")


async def test_upstream_closes_mid_content_length_body(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    upstream = RawServer(canned(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 100))
    await nursery.start(upstream.run)
    _, port = await start_outbound(nursery, tmp_path, upstream.port)
    async with RawClient.connect(port) as client:
        await client.send(request("GET", "/"))
        resp = await client.read_head()
        assert resp.status == 200 and resp.header("content-length") == "1000"
        data, how = await client.read_until_closed()
    assert len(data) < 1000
    assert how in ("eof", "reset")


async def test_upstream_closes_mid_chunked_body(nursery: trio.Nursery, tmp_path: Path) -> None:
    upstream = RawServer(
        canned(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabc")
    )
    await nursery.start(upstream.run)
    _, port = await start_outbound(nursery, tmp_path, upstream.port)
    async with RawClient.connect(port) as client:
        await client.send(request("GET", "/"))
        resp = await client.read_head()
        assert resp.status == 200
        data, how = await client.read_until_closed()
    # A last chunk would tell the client the body was complete.
    assert not data.endswith(b"0\r\n\r\n"), data
    assert how in ("eof", "reset")


async def test_upstream_refuses_connection(nursery: trio.Nursery, tmp_path: Path) -> None:
    sidecar, port = await start_outbound(nursery, tmp_path, closed_port())
    assert await _one_error(port) == (502, "upstream_connect_failed")
    assert await _one_error(port, "HEAD") == (502, "upstream_connect_failed")
    stats = (await admin_get(sidecar, "/stats")).json()
    assert stats["cluster.up.upstream_errors.upstream_connect_failed"] == 2


async def test_upstream_timeout(nursery: trio.Nursery, tmp_path: Path, app: TestApp) -> None:
    tables = [
        {
            "name": "main",
            "routes": [{"name": "slow", "backends": [{"cluster": "up"}], "timeout_s": 0.3}],
        }
    ]
    _, port = await start_outbound(nursery, tmp_path, app.port, route_tables=tables)
    async with RawClient.connect(port) as client:
        await client.send(request("GET", "/slow?ms=5000"))
        resp = await client.read_response()
        assert (resp.status, resp.header("x-meshd-error")) == (504, "upstream_timeout")
        assert resp.header("connection") == "close"
        assert await client.wait_closed() in ("eof", "reset")


async def test_no_route(nursery: trio.Nursery, tmp_path: Path, app: TestApp) -> None:
    tables = [
        {
            "name": "main",
            "routes": [
                {
                    "name": "v2",
                    "match": {"path": {"prefix": "/v2"}},
                    "backends": [{"cluster": "up"}],
                }
            ],
        }
    ]
    _, port = await start_outbound(nursery, tmp_path, app.port, route_tables=tables)
    async with RawClient.connect(port) as client:
        await client.send(request("GET", "/v1/thing"))
        resp = await client.read_response()
        assert (resp.status, resp.header("x-meshd-error")) == (404, "no_route")
        # A proxy answer is still an answer: the connection stays usable.
        await client.send(request("GET", "/v2/thing"))
        resp = await client.read_response()
        assert resp.status == 200
        assert resp.json()["path"] == "/v2/thing"
    assert app.paths == ["/v2/thing"]


async def test_request_head_timeout(nursery: trio.Nursery, tmp_path: Path, app: TestApp) -> None:
    _, port = await start_outbound(nursery, tmp_path, app.port, request_headers_timeout_s=0.3)
    async with RawClient.connect(port) as client:
        await client.send(b"GET /echo HTTP/1.1\r\nHost: api.test\r\nX-Slow: ")
        resp = await client.read_response()
        assert (resp.status, resp.header("x-meshd-error")) == (408, "request_timeout")
        assert await client.wait_closed() in ("eof", "reset")
    assert app.requests == 0


async def test_connect_method_unsupported(chain: Chain, app: TestApp) -> None:
    async with RawClient.connect(chain.port) as client:
        await client.send(b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n")
        resp = await client.read_response()
    assert (resp.status, resp.header("x-meshd-error")) == (405, "connect_unsupported")
    assert app.requests == 0


async def test_upstream_answers_before_reading_body(nursery: trio.Nursery, tmp_path: Path) -> None:
    """An early answer (413 here) reaches the client; the connection can't be used again."""

    async def early(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 3\r\n\r\nbig")
        with trio.move_on_after(TIMEOUT):
            while await stream.receive_some(65536):
                pass

    upstream = RawServer(early)
    await nursery.start(upstream.run)
    _, port = await start_outbound(nursery, tmp_path, upstream.port)
    async with RawClient.connect(port) as client:
        await client.send(
            request("POST", "/", headers=[("Content-Length", "1000000")]) + b"x" * 1000
        )
        resp = await client.read_response()
        assert (resp.status, resp.body) == (413, b"big")
        # The rest of the request body is still coming, so the proxy closes this connection
        # and must say so (RFC 9112 9.6), or the client may try to reuse it.
        assert resp.header("connection") == "close"
        assert await client.wait_closed() in ("eof", "reset")


# -- 10. metrics ------------------------------------------------------------------------------


async def test_metrics_count_requests_with_labels(chain: Chain) -> None:
    async with RawClient.connect(chain.port) as client:
        for target in ("/echo/1", "/echo/2", "/echo/3", "/status/503"):
            await client.send(request("GET", target))
            await client.read_response()
        await client.send(request("POST", "/upload", body=b"abc"))
        await client.read_response()

    def requests_total(text: str) -> dict[tuple[str, ...], float]:
        out = {}
        for family in text_string_to_metric_families(text):
            if family.name == "meshd_requests":
                for sample in family.samples:
                    if sample.name == "meshd_requests_total":
                        labels = sample.labels
                        key = tuple(
                            labels[k]
                            for k in (
                                "direction",
                                "source",
                                "destination",
                                "route",
                                "method",
                                "code",
                            )
                        )
                        out[key] = sample.value
        return out

    outbound = requests_total((await admin_get(chain.outbound, "/metrics")).text)
    assert outbound[("outbound", "web", "api", "default", "GET", "200")] == 3
    assert outbound[("outbound", "web", "api", "default", "GET", "503")] == 1
    assert outbound[("outbound", "web", "api", "default", "POST", "200")] == 1
    inbound = requests_total((await admin_get(chain.inbound, "/metrics")).text)
    assert inbound[("inbound", "unknown", "api", "default", "GET", "200")] == 3
    assert inbound[("inbound", "unknown", "api", "default", "POST", "200")] == 1
    stats = (await admin_get(chain.outbound, "/stats")).json()
    assert stats["http.outbound.web.api.default.GET.200.requests"] == 3


# -- more edges -------------------------------------------------------------------------------


async def test_client_leaves_mid_response(chain: Chain) -> None:
    """A client that goes away mid-body leaves nothing behind, and the proxy keeps serving."""
    async with RawClient.connect(chain.port) as client:
        await client.send(request("GET", "/stream?size=50000000"))
        resp = await client.read_head()
        assert resp.status == 200
        pieces = client.body_pieces(resp)
        await anext(pieces)
        await pieces.aclose()
    with trio.fail_after(TIMEOUT):
        while chain.outbound.listeners.connection_count or chain.inbound.listeners.connection_count:
            await trio.sleep(0.02)
    async with RawClient.connect(chain.port) as client:
        await client.send(request("GET", "/echo/next"))
        assert (await client.read_response()).json()["path"] == "/echo/next"
    for sidecar, name in ((chain.outbound, "api"), (chain.inbound, "local_app")):
        [info] = [c for c in sidecar.clusters_info() if c["name"] == name]
        assert info["endpoints"][0]["active"] == 0


async def test_pooled_connection_closed_by_upstream_is_replaced(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The upstream closes every connection after one keep-alive response: no request fails."""

    async def one_then_close(stream: trio.SocketStream) -> None:
        if await read_head(stream):
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    upstream = RawServer(one_then_close)
    await nursery.start(upstream.run)
    _, port = await start_outbound(nursery, tmp_path, upstream.port)
    async with RawClient.connect(port) as client:
        for method in ("GET", "GET", "DELETE", "GET", "HEAD", "GET"):
            await client.send(request(method, "/"))
            resp = await client.read_response(head_request=method == "HEAD")
            assert resp.status == 200, (method, resp)
    assert upstream.connections == 6


async def test_error_response_to_head_has_no_body(nursery: trio.Nursery, tmp_path: Path) -> None:
    _, port = await start_outbound(nursery, tmp_path, closed_port())
    async with RawClient.connect(port) as client:
        await client.send(request("HEAD", "/"))
        resp = await client.read_response(head_request=True)
        assert (resp.status, resp.header("x-meshd-error")) == (502, "upstream_connect_failed")
        assert int(resp.header("content-length") or "0") > 0
        await client.send(request("GET", "/"))
        resp = await client.read_response()
        assert resp.status == 502
        assert resp.body.startswith(b"upstream_connect_failed")


async def test_body_of_unrouted_request(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    tables = [
        {
            "name": "main",
            "routes": [
                {
                    "name": "v2",
                    "match": {"path": {"prefix": "/v2"}},
                    "backends": [{"cluster": "up"}],
                }
            ],
        }
    ]
    _, port = await start_outbound(nursery, tmp_path, app.port, route_tables=tables)
    for size in (10, 300_000):
        async with RawClient.connect(port) as client:
            await client.send(request("POST", "/v1/x", headers=[("Content-Length", str(size))]))
            # The proxy may answer and close before taking the whole body; the answer must
            # still reach the client (a lingering close, not a reset that destroys it).
            with contextlib.suppress(trio.BrokenResourceError):
                await client.send(b"b" * size)
            resp = await client.read_response()
            assert (resp.status, resp.header("x-meshd-error")) == (404, "no_route")
            if resp.header("connection") == "close":
                await client.wait_closed()
                continue
            # Kept open: then the body must not be taken for the next request.
            await client.send(request("GET", "/v2/next"))
            assert (await client.read_response()).json()["path"] == "/v2/next"
    assert app.paths.count("/v1/x") == 0


async def test_idle_keep_alive_connection_closed_quietly(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    _, port = await start_outbound(nursery, tmp_path, app.port, idle_timeout_s=0.3)
    async with RawClient.connect(port) as client:
        await client.send(request("GET", "/echo/1"))
        assert (await client.read_response()).status == 200
        # No 408 for a connection between requests: it just ends.
        assert await client.wait_closed() == "eof"


async def test_expect_continue_answered_with_final_status(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The upstream refuses the body up front; the client never has to send it."""

    async def refuse(stream: trio.SocketStream) -> None:
        if await read_head(stream):
            await stream.send_all(b"HTTP/1.1 417 Expectation Failed\r\ncontent-length: 0\r\n\r\n")
            with trio.move_on_after(TIMEOUT):
                while await stream.receive_some(65536):
                    pass

    upstream = RawServer(refuse)
    await nursery.start(upstream.run)
    _, port = await start_outbound(nursery, tmp_path, upstream.port)
    async with RawClient.connect(port) as client:
        await client.send(
            request("PUT", "/", headers=[("Expect", "100-continue"), ("Content-Length", "1000")])
        )
        resp = await client.read_response()
        assert resp.status == 417
        assert resp.interim == []


async def test_route_timeout_mid_body_ends_connection(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    """The deadline passes after the head went out: the client sees the body cut, not a hang."""
    tables = [
        {
            "name": "main",
            "routes": [{"name": "r", "backends": [{"cluster": "up"}], "timeout_s": 0.3}],
        }
    ]
    _, port = await start_outbound(nursery, tmp_path, app.port, route_tables=tables)
    async with RawClient.connect(port) as client:
        # The app's gate is never opened: its body stops after the first piece.
        await client.send(request("GET", "/gated-stream"))
        resp = await client.read_head()
        assert resp.status == 200
        data, how = await client.read_until_closed()
    assert b"first-piece" in data
    assert not data.endswith(b"0\r\n\r\n"), data
    assert how in ("eof", "reset")


async def test_many_concurrent_clients(chain: Chain, app: TestApp) -> None:
    async def client_task(i: int) -> None:
        async with RawClient.connect(chain.port) as client:
            for j in range(5):
                await client.send(request("POST", f"/echo/{i}/{j}", body=b"x" * (i * 100 + j)))
                resp = await client.read_response()
                assert resp.status == 200
                assert resp.json()["body_len"] == i * 100 + j

    async with trio.open_nursery() as group:
        for i in range(40):
            group.start_soon(client_task, i)
    assert app.requests == 200
    assert chain.endpoint_created(chain.outbound, "api") <= 40


async def test_response_hop_by_hop_headers_removed(nursery: trio.Nursery, tmp_path: Path) -> None:
    upstream = RawServer(
        canned(
            b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
            b"Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Kept: yes\r\n"
            b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\ncontent-length: 2\r\n\r\nok"
        )
    )
    await nursery.start(upstream.run)
    _, port = await start_outbound(nursery, tmp_path, upstream.port)
    async with RawClient.connect(port) as client:
        await client.send(request("GET", "/"))
        resp = await client.read_response()
    names = {n for n, _ in resp.headers}
    assert not names & {"x-secret", "keep-alive", "proxy-connection", "upgrade"}, resp.headers
    assert resp.header("x-kept") == "yes"
    assert resp.header_all("set-cookie") == ["a=1", "b=2"]
    assert resp.body == b"ok"


async def test_response_trailers_are_not_merged_into_headers(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    upstream = RawServer(
        canned(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
    )
    await nursery.start(upstream.run)
    _, port = await start_outbound(nursery, tmp_path, upstream.port)
    async with RawClient.connect(port) as client:
        await client.send(request("GET", "/"))
        resp = await client.read_response()
    assert resp.body == b"ok"
    assert resp.header("x-trailer") is None, resp.raw_head


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\nok",
        b"SSH-2.0-OpenSSH_9.2\r\n",
    ],
    ids=["bad_status", "cl_and_te", "duplicate_cl", "bad_cl", "not_http"],
)
async def test_upstream_protocol_error(
    nursery: trio.Nursery, tmp_path: Path, response: bytes
) -> None:
    upstream = RawServer(canned(response))
    await nursery.start(upstream.run)
    sidecar, port = await start_outbound(nursery, tmp_path, upstream.port)
    assert await _one_error(port) == (502, "upstream_protocol_error")
    stats = sidecar.stats_info()
    assert stats["cluster.up.upstream_errors.upstream_protocol_error"] == 1


async def test_client_connection_close(chain: Chain) -> None:
    async with RawClient.connect(chain.port) as client:
        await client.send(request("GET", "/echo/bye", headers=[("Connection", "close")]))
        resp = await client.read_response()
        assert resp.json()["path"] == "/echo/bye"
        assert resp.header("connection") == "close"
        assert await client.wait_closed() == "eof"


async def test_absolute_form_target_overrides_host(chain: Chain) -> None:
    """RFC 9112 3.2.2: with an absolute-form target, the proxy replaces Host with its authority."""
    async with RawClient.connect(chain.port) as client:
        await client.send(request("GET", "http://api.test:8080/echo/abs", host="other.test"))
        resp = await client.read_response()
    assert app_headers(resp.json())["host"] == ["api.test:8080"]


async def test_pipelined_after_proxy_error(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    tables = [
        {
            "name": "main",
            "routes": [
                {
                    "name": "v2",
                    "match": {"path": {"prefix": "/v2"}},
                    "backends": [{"cluster": "up"}],
                }
            ],
        }
    ]
    _, port = await start_outbound(nursery, tmp_path, app.port, route_tables=tables)
    async with RawClient.connect(port) as client:
        await client.send(
            request("GET", "/v2/a") + request("GET", "/nope") + request("GET", "/v2/b")
        )
        first = await client.read_response()
        second = await client.read_response()
        third = await client.read_response()
    assert first.json()["path"] == "/v2/a"
    assert (second.status, second.header("x-meshd-error")) == (404, "no_route")
    assert third.json()["path"] == "/v2/b"


@pytest.mark.parametrize(
    "extra",
    [b"JUNK", b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nSTRAY"],
    ids=["junk", "stray-response"],
)
async def test_junk_after_complete_response_is_discarded(
    nursery: trio.Nursery, tmp_path: Path, extra: bytes
) -> None:
    """RFC 9112 6.3: extra data after a complete response is discarded, not an error. Even a
    whole response in the same write is never relayed: it would answer the client's next
    request."""
    upstream = RawServer(canned(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" + extra))
    await nursery.start(upstream.run)
    _, port = await start_outbound(nursery, tmp_path, upstream.port)
    async with RawClient.connect(port) as client:
        for _ in range(2):
            await client.send(request("GET", "/"))
            resp = await client.read_response()
            assert (resp.status, resp.body) == (200, b"ok"), resp
    # The connection that carried junk was not reused.
    assert upstream.connections == 2


async def test_stray_response_after_a_complete_one_never_reaches_the_next_client(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A backend that writes a second, unasked-for response a moment after a complete one:
    the pooled connection must not carry it to the next request (one client reading an answer
    meant for nobody, or for another). The stray bytes arrive after the connection went back
    to the pool, and the next request comes right after (sooner than any idle-time shortcut)."""

    async def handler(stream: trio.SocketStream) -> None:
        buf = bytearray()
        if not await read_head(stream, buf):
            return
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await trio.sleep(0.02)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nSTRAY")
        # Then serve what comes next on this connection as a normal backend would.
        while await read_head(stream, buf):
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    upstream = RawServer(handler)
    await nursery.start(upstream.run)
    _, port = await start_outbound(nursery, tmp_path, upstream.port)
    for _ in range(5):
        async with RawClient.connect(port) as client:
            await client.send(request("GET", "/"))
            resp = await client.read_response()
            assert (resp.status, resp.body) == (200, b"ok"), resp
        await trio.sleep(0.05)  # the stray bytes are in by now; well under 0.1 s idle


async def test_dot_segments_cannot_escape_a_prefix_route(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    """``/api/../secret`` is ``/secret``: it doesn't match the ``/api/`` route, and what the
    app gets through a route is the normalized path, never one with dot segments."""
    tables = [
        {
            "name": "main",
            "routes": [
                {
                    "name": "api",
                    "match": {"path": {"prefix": "/api/"}},
                    "backends": [{"cluster": "up"}],
                }
            ],
        }
    ]
    _, port = await start_outbound(nursery, tmp_path, app.port, route_tables=tables)
    async with RawClient.connect(port) as client:
        for target in ("/api/../secret", "/api/%2e%2e/secret", "/api/./..//secret"):
            await client.send(request("GET", target))
            resp = await client.read_response()
            assert (resp.status, resp.header("x-meshd-error")) == (404, "no_route"), target
        await client.send(request("GET", "/api/v1/../items//x/./y?q=/../z"))
        resp = await client.read_response()
        assert resp.status == 200
        assert (resp.json()["path"], resp.json()["query"]) == ("/api/items/x/y", "q=/../z")
        await client.send(request("GET", "/api/%zz"))
        resp = await client.read_response()
        assert resp.status == 400
    assert app.paths == ["/api/items/x/y"]
