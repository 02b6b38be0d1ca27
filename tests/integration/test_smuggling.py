"""Request smuggling and malformed input: answered by the proxy, closed, never forwarded.

Each case sends a bad request followed by a well-formed one (the request a desync would
smuggle). The proxy must answer the documented status with ``x-meshd-error``, close the
connection, and the app must see neither request.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from helpers import RawClient, TestApp, request, start_inbound

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: api.test\r\n\r\n"

CASES: list[tuple[str, bytes, int, str]] = [
    (
        "cl_and_te",
        b"POST /a HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "bad_request",
    ),
    (
        "te_and_cl",
        b"POST /a HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n",
        400,
        "bad_request",
    ),
    (
        "duplicate_cl_same",
        b"POST /a HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        400,
        "bad_request",
    ),
    (
        "duplicate_cl_different",
        b"POST /a HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3\r\nContent-Length: 50\r\n\r\nabc",
        400,
        "bad_request",
    ),
    (
        "cl_list",
        b"POST /a HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3, 3\r\n\r\nabc",
        400,
        "bad_request",
    ),
    (
        "cl_plus",
        b"POST /a HTTP/1.1\r\nHost: api.test\r\nContent-Length: +3\r\n\r\nabc",
        400,
        "bad_request",
    ),
    (
        "cl_negative",
        b"POST /a HTTP/1.1\r\nHost: api.test\r\nContent-Length: -1\r\n\r\nabc",
        400,
        "bad_request",
    ),
    (
        "cl_suffix",
        b"POST /a HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3a\r\n\r\nabc",
        400,
        "bad_request",
    ),
    (
        "cl_overflow",
        b"POST /a HTTP/1.1\r\nHost: api.test\r\nContent-Length: 99999999999999999999999\r\n\r\nabc",
        400,
        "bad_request",
    ),
    (
        "chunk_size_not_hex",
        b"POST /a HTTP/1.1\r\nHost: api.test\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        400,
        "bad_request",
    ),
    (
        "chunk_size_overflow",
        b"POST /a HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10000000000000000003\r\nabc\r\n0\r\n\r\n",
        400,
        "bad_request",
    ),
    (
        "chunk_size_negative",
        b"POST /a HTTP/1.1\r\nHost: api.test\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
        400,
        "bad_request",
    ),
    (
        "obs_fold",
        b"GET /a HTTP/1.1\r\nHost: api.test\r\nX-Folded: one\r\n two\r\n\r\n",
        400,
        "bad_request",
    ),
    (
        "obs_fold_te",
        b"POST /a HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: identity\r\n chunked\r\n\r\n"
        b"0\r\n\r\n",
        400,
        "bad_request",
    ),
    ("bare_lf_request_line", b"GET /a HTTP/1.1\nHost: api.test\r\n\r\n", 400, "bad_request"),
    ("bare_lf_header", b"GET /a HTTP/1.1\r\nHost: api.test\nX-A: b\r\n\r\n", 400, "bad_request"),
    ("bare_lf_end", b"GET /a HTTP/1.1\r\nHost: api.test\r\n\n", 400, "bad_request"),
    (
        "bare_cr_header",
        b"GET /a HTTP/1.1\r\nHost: api.test\r\nX-A: b\rX-B: c\r\n\r\n",
        400,
        "bad_request",
    ),
    (
        "space_before_colon",
        b"POST /a HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        400,
        "bad_request",
    ),
    (
        "te_gzip",
        b"POST /a HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        400,
        "bad_request",
    ),
    (
        "te_chunked_then_gzip",
        b"POST /a HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400,
        "bad_request",
    ),
    (
        "te_in_http10",
        b"POST /a HTTP/1.0\r\nHost: api.test\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        400,
        "bad_request",
    ),
    ("missing_host", b"GET /a HTTP/1.1\r\nX-A: b\r\n\r\n", 400, "bad_request"),
    (
        "duplicate_host",
        b"GET /a HTTP/1.1\r\nHost: api.test\r\nHost: evil.test\r\n\r\n",
        400,
        "bad_request",
    ),
    ("invalid_method", b"G(T /a HTTP/1.1\r\nHost: api.test\r\n\r\n", 400, "bad_request"),
    ("invalid_version", b"GET /a HTTP/9.9\r\nHost: api.test\r\n\r\n", 400, "bad_request"),
    (
        "nul_in_header",
        b"GET /a HTTP/1.1\r\nHost: api.test\r\nX-A: a\x00b\r\n\r\n",
        400,
        "bad_request",
    ),
    ("space_in_target", b"GET /a b HTTP/1.1\r\nHost: api.test\r\n\r\n", 400, "bad_request"),
    (
        "request_line_too_long",
        b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: api.test\r\n\r\n",
        431,
        "headers_too_large",
    ),
    (
        "headers_too_large",
        b"GET /a HTTP/1.1\r\nHost: api.test\r\n"
        + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 100) for i in range(30))
        + b"\r\n",
        431,
        "headers_too_large",
    ),
    (
        "one_header_too_large",
        b"GET /a HTTP/1.1\r\nHost: api.test\r\nX-Big: " + b"v" * 3000 + b"\r\n\r\n",
        431,
        "headers_too_large",
    ),
]


@pytest.mark.parametrize(
    ("wire", "status", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_rejected_and_not_forwarded(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp, wire: bytes, status: int, reason: str
) -> None:
    sidecar, port = await start_inbound(nursery, tmp_path, app.port, max_request_headers_kb=2)
    async with RawClient.connect(port) as client:
        await client.send(wire + SMUGGLED)
        resp = await client.read_response()
        assert (resp.status, resp.header("x-meshd-error")) == (status, reason), resp.body
        assert resp.header("connection") == "close"
        # Closed: whatever followed the bad request is never read as a request.
        await client.wait_closed()
    # A good request on a new connection still works, and is the only one the app saw.
    async with RawClient.connect(port) as client:
        await client.send(request("GET", "/echo/good"))
        assert (await client.read_response()).status == 200
    assert app.paths == ["/echo/good"]
    # The rejection is counted like any other answer.
    stats = sidecar.stats_info()
    assert any(
        k.startswith("http.inbound.") and k.endswith(f".{status}.requests") for k in stats
    ), stats


async def test_head_over_limit_sent_in_pieces(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    """A head that keeps growing is cut off at the limit, even when it arrives a piece at a time."""
    _, port = await start_inbound(nursery, tmp_path, app.port, max_request_headers_kb=1)
    async with RawClient.connect(port) as client:
        await client.send(b"GET /a HTTP/1.1\r\nHost: api.test\r\n")
        for i in range(30):  # 30 * 62 bytes: well over 1 KiB
            try:
                await client.send(b"X-Filler-%02d: %s\r\n" % (i, b"v" * 48))
            except trio.BrokenResourceError:
                break  # the proxy answered and closed: the answer is waiting to be read
            await trio.sleep(0.005)  # pacing only: lets the pieces arrive as separate reads
        resp = await client.read_response()
        assert (resp.status, resp.header("x-meshd-error")) == (431, "headers_too_large")
    assert app.requests == 0


async def test_head_under_limit_sent_in_pieces(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    """A head under the limit passes however it is split across reads (no double counting)."""
    _, port = await start_inbound(nursery, tmp_path, app.port, max_request_headers_kb=1)
    head = b"GET /echo/pieces HTTP/1.1\r\nHost: api.test\r\n" + b"".join(
        b"X-Filler-%02d: %s\r\n" % (i, b"v" * 48) for i in range(13)
    )
    head += b"\r\n"
    assert 800 < len(head) < 1024
    async with RawClient.connect(port) as client:
        for i in range(0, len(head), 50):
            await client.send(head[i : i + 50])
            await trio.sleep(0.005)  # pacing only
        resp = await client.read_response()
        assert resp.status == 200, resp.raw_head + resp.body
    assert app.paths == ["/echo/pieces"]


async def test_valid_edge_cases_are_accepted(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    """Not everything unusual is an attack: these must pass."""
    _, port = await start_inbound(nursery, tmp_path, app.port)
    async with RawClient.connect(port) as client:
        # Upper-case chunk sizes, a chunk extension, and trailers.
        await client.send(
            b"POST /upload HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"A;name=value\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        resp = await client.read_response()
        assert resp.json()["count"] == 10
        # Content-Length with leading zeros and optional whitespace.
        await client.send(
            b"POST /upload HTTP/1.1\r\nHost: api.test\r\nContent-Length:  003 \r\n\r\nabc"
        )
        resp = await client.read_response()
        assert resp.json()["count"] == 3
        # Mixed-case Transfer-Encoding value.
        await client.send(
            b"POST /upload HTTP/1.1\r\nHost: api.test\r\n"
            b"Transfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        resp = await client.read_response()
        assert resp.json()["count"] == 3
    assert app.requests == 3


async def test_request_trailers_are_not_forwarded_as_headers(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    """Trailer fields are not header fields (RFC 9110 6.5.1): they must not spoof the head."""
    _, port = await start_inbound(nursery, tmp_path, app.port)
    async with RawClient.connect(port) as client:
        await client.send(
            b"POST /echo/trailers HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\nX-Trailer: t\r\nX-Forwarded-For: 6.6.6.6\r\n"
            b"X-Request-Id: spoofed\r\n\r\n"
        )
        resp = await client.read_response()
    assert resp.status == 200
    echo = resp.json()
    seen = {name: value for name, value in echo["headers"]}
    assert echo["body_len"] == 3
    assert "x-trailer" not in seen
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-request-id"] != "spoofed"
