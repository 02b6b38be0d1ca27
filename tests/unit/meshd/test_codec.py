"""Sans-IO tests of meshd.http.codec and meshd.http.serialize: bytes in, events and bytes out."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.http.codec import (
    CHUNKED,
    EV_DATA,
    EV_END,
    EV_HEAD,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    HttpError,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
)
from meshd.http.serialize import chunk, request_head_bytes, response_head_bytes

LIMIT = 64 * 1024


@dataclass
class Parsed:
    """What a request parser produced, in a comparable form."""

    heads: list[RequestHead] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    ends: int = 0
    order: list[int] = field(default_factory=list)

    def summary(self) -> list[object]:
        return [
            [
                (
                    h.method,
                    h.target,
                    h.version,
                    h.headers,
                    h.framing,
                    h.content_length,
                    h.keep_alive,
                )
                for h in self.heads
            ],
            self.bodies,
            self.ends,
        ]


def parse_requests(*pieces: bytes, limit: int = LIMIT) -> Parsed:
    """Feed ``pieces`` one by one, draining events after each (as the proxy does)."""
    parser = RequestParser(limit)
    out = Parsed()
    for piece in pieces:
        parser.feed(piece)
        while parser.events:
            kind, value = parser.events.pop(0)
            out.order.append(kind)
            if kind == EV_HEAD:
                assert isinstance(value, RequestHead)
                out.heads.append(value)
                out.bodies.append(b"")
            elif kind == EV_DATA:
                assert isinstance(value, bytes)
                out.bodies[-1] += value
            else:
                out.ends += 1
    return out


def one_head(data: bytes) -> RequestHead:
    parsed = parse_requests(data)
    assert len(parsed.heads) == 1
    return parsed.heads[0]


# -- RequestParser ----------------------------------------------------------------------------


def test_simple_get() -> None:
    parsed = parse_requests(
        b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: api.test\r\nX-Custom: Value\r\n\r\n"
    )
    [head] = parsed.heads
    assert parsed.order == [EV_HEAD, EV_END]
    assert head.method == b"GET"
    assert head.target == b"/a/b?x=1&y=2"
    assert head.path == "/a/b"
    assert head.version == b"1.1"
    assert head.host == b"api.test"
    # Original case and order are kept.
    assert head.headers == [(b"Host", b"api.test"), (b"X-Custom", b"Value")]
    assert head.framing == NO_BODY
    assert head.content_length == -1
    assert head.keep_alive is True
    assert head.upgrade is None
    assert head.expect_continue is False


def test_content_length_body() -> None:
    parsed = parse_requests(b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world")
    [head] = parsed.heads
    assert (head.framing, head.content_length) == (LENGTH, 11)
    assert parsed.bodies == [b"hello world"]
    assert parsed.order[0] == EV_HEAD and parsed.order[-1] == EV_END
    # Framing headers are the proxy's to regenerate: not among the forwarded ones.
    assert head.headers == [(b"Host", b"h")]


def test_zero_content_length_has_no_body() -> None:
    head = one_head(b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    assert head.framing == NO_BODY
    assert head.content_length == 0


def test_chunked_body_is_dechunked() -> None:
    parsed = parse_requests(
        b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n"
    )
    [head] = parsed.heads
    assert head.framing == CHUNKED
    assert parsed.bodies == [b"hello0123456789"]
    assert parsed.ends == 1


def test_chunked_trailers_are_not_merged_into_headers() -> None:
    """Trailer fields are not header fields (RFC 9110 6.5.1); here they could spoof XFF."""
    parsed = parse_requests(
        b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Trailer: t\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
    )
    [head] = parsed.heads
    assert head.headers == [(b"Host", b"h")]
    assert head.xff is None
    assert parsed.bodies == [b"abc"]


def test_pipelined_requests_in_one_buffer() -> None:
    parsed = parse_requests(
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /3 HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert [h.target for h in parsed.heads] == [b"/1", b"/2", b"/3"]
    assert parsed.bodies == [b"", b"abc", b""]
    assert parsed.order == [EV_HEAD, EV_END, EV_HEAD, EV_DATA, EV_END, EV_HEAD, EV_END]


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        ("1.1", None, True),
        ("1.1", "close", False),
        ("1.1", "Close", False),
        ("1.0", None, False),
        ("1.0", "keep-alive", True),
        ("1.0", "Keep-Alive", True),
    ],
)
def test_keep_alive(version: str, connection: str | None, keep_alive: bool) -> None:
    data = f"GET / HTTP/{version}\r\nHost: h\r\n"
    if connection:
        data += f"Connection: {connection}\r\n"
    head = one_head((data + "\r\n").encode())
    assert head.keep_alive is keep_alive
    assert head.version == version.encode()


def test_hop_by_hop_and_rewritten_headers_are_set_aside() -> None:
    head = one_head(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Hop, x-other\r\nX-Hop: 1\r\n"
        b"X-Other: 2\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n"
        b"Trailer: X-T\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n"
        b"X-Request-Id: rid\r\n"
        b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
        b"X-Kept: yes\r\n\r\n"
    )
    assert head.headers == [(b"Host", b"h"), (b"X-Kept", b"yes")]
    assert head.xff == b"1.1.1.1, 2.2.2.2"
    assert head.request_id == b"rid"
    assert head.traceparent == b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert b"x-hop" in head.connection_tokens


def test_expect_continue() -> None:
    head = one_head(
        b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n"
    )
    assert head.expect_continue is True
    assert head.framing == LENGTH


def test_upgrade_request_keeps_tail() -> None:
    parser = RequestParser(LIMIT)
    parser.feed(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n\x81\x05hello"
    )
    kind, head = parser.events.pop(0)
    assert kind == EV_HEAD and isinstance(head, RequestHead)
    assert head.upgrade == b"websocket"
    assert (b"Sec-WebSocket-Version", b"13") in head.headers
    assert parser.upgrade_tail == b"\x81\x05hello"


def test_upgrade_without_connection_upgrade_is_ignored() -> None:
    head = one_head(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n")
    assert head.upgrade is None


def test_in_head() -> None:
    parser = RequestParser(LIMIT)
    states = [parser.in_head]
    parser.feed(b"GET / HTTP/1.1\r\nHo")
    states.append(parser.in_head)
    parser.feed(b"st: h\r\n\r\n")
    states.append(parser.in_head)
    assert states == [False, True, False]
    assert [k for k, _ in parser.events] == [EV_HEAD, EV_END]


def test_http10_without_host_is_accepted() -> None:
    head = one_head(b"GET / HTTP/1.0\r\n\r\n")
    assert head.host is None
    assert head.keep_alive is False


BAD_REQUESTS = {
    "cl_and_te": (
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    ),
    "duplicate_cl": (
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"
    ),
    "conflicting_cl": (
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc"
    ),
    "cl_plus": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc",
    "cl_negative": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
    "cl_junk": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3a\r\n\r\nabc",
    "chunk_not_hex": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
    "chunk_overflow": (
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n"
    ),
    "obs_fold": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n",
    "bare_lf_request_line": b"GET / HTTP/1.1\nHost: h\r\n\r\n",
    "bare_lf_header": b"GET / HTTP/1.1\r\nHost: h\nX-A: b\r\n\r\n",
    "te_not_chunked": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
    "missing_host": b"GET / HTTP/1.1\r\n\r\n",
    "duplicate_host": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
    "bad_method": b"G\x01T / HTTP/1.1\r\nHost: h\r\n\r\n",
}


@pytest.mark.parametrize("data", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_requests_are_rejected(data: bytes) -> None:
    with pytest.raises(HttpError) as info:
        parse_requests(data)
    assert (info.value.status, info.value.reason) == (400, "bad_request")


def test_head_too_large() -> None:
    with pytest.raises(HttpError) as info:
        parse_requests(
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"v" * 2000 + b"\r\n\r\n", limit=1024
        )
    assert (info.value.status, info.value.reason) == (431, "headers_too_large")


def test_request_line_too_long() -> None:
    with pytest.raises(HttpError) as info:
        parse_requests(b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", limit=1024)
    assert info.value.status == 431


def test_endless_head_in_pieces_is_cut_off() -> None:
    parser = RequestParser(1024)
    parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\n")
    statuses = []
    for _ in range(20):  # 20 * 57 bytes: over the limit
        try:
            parser.feed(b"X-A: " + b"v" * 50 + b"\r\n")
        except HttpError as exc:
            statuses.append(exc.status)
            break
    assert statuses == [431]


def test_head_limit_counts_each_byte_once() -> None:
    """A head under the limit passes however it is split (no double counting across reads)."""
    head = (
        b"GET / HTTP/1.1\r\nHost: h\r\n"
        + b"".join(b"X-F-%02d: %s\r\n" % (i, b"v" * 50) for i in range(14))
        + b"\r\n"
    )
    assert 800 < len(head) < 1024
    assert len(parse_requests(head, limit=1024).heads) == 1
    for size in (1, 7, 100, 400):
        pieces = [head[i : i + size] for i in range(0, len(head), size)]
        assert len(parse_requests(*pieces, limit=1024).heads) == 1, size


def test_body_bytes_do_not_count_against_head_limit() -> None:
    parser = RequestParser(1024)
    parser.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(100):
        parser.feed(b"x" * 1000)
    data = sum(len(v) for k, v in parser.events if k == EV_DATA and isinstance(v, bytes))
    assert data == 100000


SPLIT_MESSAGES = {
    "get": b"GET /p?q=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n",
    "post_length": b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789",
    "chunked": (
        b"PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;a=b\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n"
    ),
    "pipelined": (
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\n"
        b"Host: h\r\nContent-Length: 2\r\n\r\nok"
        b"GET /3 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    ),
}


@pytest.mark.parametrize("data", SPLIT_MESSAGES.values(), ids=SPLIT_MESSAGES.keys())
def test_request_split_at_every_byte(data: bytes) -> None:
    whole = parse_requests(data).summary()
    for i in range(1, len(data)):
        assert parse_requests(data[:i], data[i:]).summary() == whole, i
    assert parse_requests(*[data[i : i + 1] for i in range(len(data))]).summary() == whole


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(sorted(SPLIT_MESSAGES)),
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=20),
)
def test_request_random_splits(name: str, cuts: list[int]) -> None:
    data = SPLIT_MESSAGES[name]
    points = sorted({c for c in cuts if c < len(data)})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert parse_requests(*pieces).summary() == parse_requests(data).summary()


# -- ResponseParser ---------------------------------------------------------------------------


def parse_response(*pieces: bytes, head_request: bool = False) -> tuple[ResponseParser, bytes]:
    parser = ResponseParser(head_request=head_request)
    body = b""
    for piece in pieces:
        parser.feed(piece)
        body += b"".join(parser.body)
        parser.body.clear()
    return parser, body


def test_response_with_length() -> None:
    parser, body = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello")
    [head] = parser.heads
    assert (head.status, head.reason) == (200, b"OK")
    assert (head.framing, head.content_length) == (LENGTH, 5)
    assert head.headers == [(b"X-A", b"1")]
    assert head.keep_alive is True
    assert body == b"hello"
    assert parser.complete and not parser.extra


def test_chunked_response() -> None:
    parser, body = parse_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        b"2\r\nde\r\n0\r\n\r\n",
    )
    assert parser.heads[0].framing == CHUNKED
    assert body == b"abcde"
    assert parser.complete


def test_response_until_close() -> None:
    parser, body = parse_response(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nsome", b" more")
    assert parser.heads[0].framing == UNTIL_CLOSE
    assert body == b"some more"
    assert not parser.complete


def test_http10_response_is_not_keep_alive() -> None:
    parser, _ = parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert parser.heads[0].keep_alive is False
    assert parser.complete


def test_response_connection_close() -> None:
    parser, _ = parse_response(
        b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n"
    )
    [head] = parser.heads
    assert head.keep_alive is False
    assert head.headers == []


def test_head_response_has_no_body() -> None:
    parser, body = parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", head_request=True
    )
    [head] = parser.heads
    assert head.framing == NO_BODY
    assert head.content_length == 1000
    assert body == b""
    assert parser.complete


def test_head_response_chunked_has_no_body() -> None:
    parser, body = parse_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", head_request=True
    )
    assert parser.heads[0].framing == NO_BODY
    assert parser.complete and body == b""


def test_parser_reused_after_head_response() -> None:
    parser = ResponseParser(head_request=True)
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    assert parser.complete
    parser.reset(head_request=False)
    parser.feed(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
    assert [h.status for h in parser.heads] == [201]
    assert parser.body == [b"ok"]
    assert parser.complete


def test_parser_reused_after_get() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert parser.complete
    parser.reset(head_request=False)
    parser.feed(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert [h.status for h in parser.heads] == [404]
    assert parser.complete and not parser.extra


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    parser, body = parse_response(f"HTTP/1.1 {status} X\r\nContent-Length: 10\r\n\r\n".encode())
    assert parser.heads[0].framing == NO_BODY
    assert parser.complete and body == b""


def test_interim_and_final_in_one_buffer() -> None:
    parser, body = parse_response(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    assert [h.status for h in parser.heads] == [100, 103, 200]
    assert parser.heads[1].headers == [(b"Link", b"</a.css>")]
    assert all(h.framing == NO_BODY for h in parser.heads[:2])
    assert body == b"ok"
    assert parser.complete


def test_interim_alone_is_not_complete() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert [h.status for h in parser.heads] == [100]
    assert not parser.complete
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert [h.status for h in parser.heads] == [100, 200]
    assert parser.complete


def test_switching_protocols_returns_tail() -> None:
    parser = ResponseParser()
    tail = parser.feed(
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x02hi"
    )
    assert tail == b"\x81\x02hi"
    [head] = parser.heads
    assert head.status == 101
    assert head.upgrade == b"websocket"


def test_bytes_after_complete_response_mark_extra() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    assert parser.complete and parser.extra


def test_second_response_in_the_same_read_is_not_parsed() -> None:
    """An unasked-for response that comes in the same read as a complete one is extra bytes,
    not a response: relayed, it would answer the client's next request."""
    parser = ResponseParser()
    parser.feed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nSTRAY"
    )
    assert [h.status for h in parser.heads] == [200]
    assert parser.body == [b"ok"]
    assert parser.complete and parser.extra
    parser.reset(head_request=False)  # a fresh llhttp parser: the old one stopped mid-message
    parser.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert [h.status for h in parser.heads] == [204]
    assert parser.complete and not parser.extra


def test_garbage_after_complete_response_keeps_the_response() -> None:
    """A complete response followed by junk in the same read is still that response."""
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK")
    assert [h.status for h in parser.heads] == [200]
    assert parser.body == [b"ok"]
    assert parser.complete and parser.extra


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTQ/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_bad_responses(data: bytes) -> None:
    with pytest.raises(HttpError) as info:
        ResponseParser().feed(data)
    assert (info.value.status, info.value.reason) == (502, "upstream_protocol_error")


RESPONSES = {
    "chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
        b"X-A: b\r\n\r\n3\r\nabc\r\n1;x=y\r\nd\r\n0\r\n\r\n"
    ),
    "interim": (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone"
    ),
    "no_content": b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n",
}


@pytest.mark.parametrize("data", RESPONSES.values(), ids=RESPONSES.keys())
def test_response_split_at_every_byte(data: bytes) -> None:
    def summary(parser: ResponseParser, body: bytes) -> object:
        return (
            [(h.status, h.reason, h.headers, h.framing, h.content_length) for h in parser.heads],
            body,
            parser.complete,
        )

    whole = summary(*parse_response(data))
    for i in range(1, len(data)):
        assert summary(*parse_response(data[:i], data[i:])) == whole, i
    assert summary(*parse_response(*[data[i : i + 1] for i in range(len(data))])) == whole


# -- serialize --------------------------------------------------------------------------------


def test_chunk() -> None:
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"


def test_request_head_bytes() -> None:
    head = one_head(
        b"POST /p?q HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nConnection: keep-alive, X-Hop\r\nX-Hop: z\r\n"
        b"Content-Length: 3\r\nX-Forwarded-For: 1.2.3.4\r\n\r\nabc"
    )
    out = request_head_bytes(head, b"/p?q", b"rid", b"tp", b"1.2.3.4, 10.0.0.1")
    assert out == (
        b"POST /p?q HTTP/1.1\r\nHost: h\r\nX-A: 1\r\ncontent-length: 3\r\n"
        b"x-forwarded-for: 1.2.3.4, 10.0.0.1\r\nx-request-id: rid\r\ntraceparent: tp\r\n\r\n"
    )


def test_request_head_bytes_chunked_expect_and_http10() -> None:
    head = one_head(
        b"PUT /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
    )
    out = request_head_bytes(head, b"/u", b"r", b"t", b"x")
    assert out.startswith(b"PUT /u HTTP/1.1\r\nHost: h\r\ntransfer-encoding: chunked\r\n")
    assert b"expect: 100-continue\r\n" in out
    assert out.count(b"\r\n\r\n") == 1 and out.endswith(b"\r\n\r\n")

    head10 = one_head(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n")
    assert request_head_bytes(head10, b"/", b"r", b"t", b"x").startswith(b"GET / HTTP/1.1\r\n")


def test_request_head_bytes_upgrade() -> None:
    head = one_head(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    out = request_head_bytes(head, b"/ws", b"r", b"t", b"x")
    assert b"connection: upgrade\r\nupgrade: websocket\r\n" in out


def test_request_head_bytes_parse_back() -> None:
    original = one_head(
        b"PATCH /x HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-A: 2\r\nContent-Length: 4\r\n\r\nbody"
    )
    again = one_head(request_head_bytes(original, b"/x", b"rid", b"tp", b"9.9.9.9") + b"body")
    assert again.headers == original.headers
    assert (again.method, again.target, again.content_length) == (b"PATCH", b"/x", 4)
    assert (again.request_id, again.traceparent, again.xff) == (b"rid", b"tp", b"9.9.9.9")


def response_head(data: bytes, *, head_request: bool = False) -> ResponseHead:
    parser = ResponseParser(head_request=head_request)
    parser.feed(data)
    return parser.heads[-1]


def test_response_head_bytes_length() -> None:
    head = response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello")
    assert response_head_bytes(head, LENGTH, close=False) == (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\ncontent-length: 5\r\n\r\n"
    )
    assert response_head_bytes(head, LENGTH, close=True) == (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\ncontent-length: 5\r\nconnection: close\r\n\r\n"
    )
    assert response_head_bytes(head, LENGTH, close=False, http10_keep_alive=True) == (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\n"
    )


def test_response_head_bytes_chunked_and_until_close() -> None:
    head = response_head(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n")
    assert response_head_bytes(head, CHUNKED, close=False) == (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    assert response_head_bytes(head, UNTIL_CLOSE, close=True) == (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nconnection: close\r\n\r\n"
    )


def test_response_head_bytes_head_request_keeps_length() -> None:
    head = response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", head_request=True)
    assert response_head_bytes(head, NO_BODY, close=False) == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"
    )


def test_response_head_bytes_no_content_has_no_framing() -> None:
    head = response_head(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n")
    assert (
        response_head_bytes(head, NO_BODY, close=False)
        == b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"
    )


def test_response_head_bytes_interim_and_switching() -> None:
    interim = response_head(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert response_head_bytes(interim, NO_BODY, close=False) == b"HTTP/1.1 100 Continue\r\n\r\n"
    switching = response_head(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Accept: abc\r\n\r\n"
    )
    assert response_head_bytes(switching, NO_BODY, close=False) == (
        b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: abc\r\n"
        b"connection: upgrade\r\nupgrade: websocket\r\n\r\n"
    )


def test_response_head_bytes_parse_back() -> None:
    original = response_head(
        b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\nSet-Cookie: a\r\nSet-Cookie: b\r\n\r\n"
    )
    again = response_head(response_head_bytes(original, CHUNKED, close=True))
    assert again.status == 404 and again.reason == b"Not Found"
    assert again.headers == original.headers
    assert again.framing == CHUNKED and again.keep_alive is False
