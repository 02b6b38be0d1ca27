"""Property-based fuzzing of the HTTP/1.1 request and response parsers (meshd.http.codec).

* Arbitrary bytes (and HTTP-shaped bytes, to get past the first line) fed in arbitrary
  chunkings never raise anything but :class:`HttpError`, and every feed returns.
* Valid messages survive any chunking: head fields and body bytes come out as they went in.
* A parsed request serialized for the upstream parses back to the same head.

Bounded (a few hundred examples, no deadline) so the module runs in CI in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.http.codec import (
    CHUNKED,
    EV_DATA,
    EV_END,
    EV_HEAD,
    LENGTH,
    NO_BODY,
    HttpError,
    RequestHead,
    RequestParser,
    ResponseParser,
)
from meshd.http.serialize import request_head_bytes

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

# -- strategies -------------------------------------------------------------------------------

#: Pieces that steer random input into the parser's deeper states.
_FRAGMENTS = [
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"/",
    b"/a?b=c",
    b"http://h/",
    b" HTTP/1.1",
    b" HTTP/1.0",
    b" HTTP/2.0",
    b"HTTP/1.1 ",
    b"200 OK",
    b"101 Switching",
    b"100 Continue",
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b"Host: h",
    b"Host: u@h",
    b"Content-Length: 3",
    b"Content-Length: 0",
    b"Transfer-Encoding: chunked",
    b"Connection: upgrade, host",
    b"Upgrade: websocket",
    b"Expect: 100-continue",
    b"X-Meshd-Peer-Identity: x",
    b": ",
    b"3\r\nabc\r\n",
    b"0\r\n",
    b"ffffffffffffffffff\r\n",
    b"x-t: v\r\n",
    b" ",
    b"\x00",
    b"\xff",
]
_noise = st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.binary(max_size=6)), max_size=40).map(
    b"".join
)
noise = st.one_of(st.binary(max_size=400), _noise)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` (positions beyond its end are ignored)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


cuts = st.lists(st.integers(min_value=1, max_value=2000), max_size=30)

_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_RESERVED = {
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
    "x-forwarded-for",
    "x-request-id",
    "traceparent",
}
names = st.text(alphabet=_TCHAR, min_size=1, max_size=12).filter(
    lambda n: n.lower() not in _RESERVED and not n.lower().startswith("x-meshd-")
)
_VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))
values = st.builds(
    lambda a, b: (a + b).strip(),
    st.text(alphabet=_VCHAR, max_size=12),
    st.text(alphabet=_VCHAR + " \t", max_size=12),
)
headers = st.lists(
    st.tuples(names, values).map(lambda nv: (nv[0].encode(), nv[1].encode())), max_size=15
)
hosts = st.sampled_from([b"api.test", b"api.test:8080", b"127.0.0.1", b"[::1]:80", b"h"])
_PCHAR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/%"
targets = st.builds(
    lambda p, q: ("/" + p + ("?" + q if q else "")).encode(),
    st.text(alphabet=_PCHAR, max_size=30),
    st.text(alphabet=_PCHAR + "?", max_size=20),
)
methods = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD"])
bodies = st.binary(max_size=300)
#: How a body is framed: None (no body headers), "length", or chunk sizes.
framings = st.one_of(
    st.just("length"), st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8)
)


def frame_body(
    body: bytes, framing: str | list[int], trailers: list[tuple[bytes, bytes]]
) -> tuple[bytes, bytes]:
    """(framing header line, body on the wire); a chunked body ends with ``trailers``."""
    if isinstance(framing, str):
        return b"Content-Length: %d\r\n" % len(body), body
    out = []
    rest = body
    for size in framing:
        if not rest:
            break
        piece, rest = rest[:size], rest[size:]
        out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    if rest:
        out.append(b"%x\r\n%s\r\n" % (len(rest), rest))
    out.append(b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n")
    return b"Transfer-Encoding: chunked\r\n", b"".join(out)


@dataclass
class Request:
    method: bytes
    target: bytes
    host: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    framing: str | list[int]
    trailers: list[tuple[bytes, bytes]]

    def wire(self) -> bytes:
        framing_line, body = frame_body(self.body, self.framing, self.trailers)
        lines = b"".join(n + b": " + v + b"\r\n" for n, v in self.headers)
        return (
            self.method
            + b" "
            + self.target
            + b" HTTP/1.1\r\nHost: "
            + self.host
            + b"\r\n"
            + lines
            + framing_line
            + b"\r\n"
            + body
        )


trailers = st.lists(
    st.tuples(names, values).map(lambda nv: (nv[0].encode(), nv[1].encode())), max_size=3
)
requests = st.builds(Request, methods, targets, hosts, headers, bodies, framings, trailers)


@dataclass
class Response:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    framing: str | list[int]
    interim: list[int]
    trailers: list[tuple[bytes, bytes]]

    def wire(self) -> bytes:
        framing_line, body = frame_body(self.body, self.framing, self.trailers)
        first = b"".join(b"HTTP/1.1 %d Interim\r\n\r\n" % code for code in self.interim)
        lines = b"".join(n + b": " + v + b"\r\n" for n, v in self.headers)
        status_line = b"HTTP/1.1 %d %s\r\n" % (self.status, self.reason)
        return first + status_line + lines + framing_line + b"\r\n" + body


responses = st.builds(
    Response,
    st.integers(min_value=200, max_value=599).filter(lambda s: s not in (204, 304)),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz ", min_size=1, max_size=20).map(
        lambda r: r.strip().encode() or b"OK"
    ),
    headers,
    bodies,
    framings,
    st.lists(st.sampled_from([100, 102, 103]), max_size=2),
    trailers,
)


class Message(Protocol):
    def wire(self) -> bytes: ...


_MUTATION = st.tuples(
    st.integers(min_value=0, max_value=4000),  # where
    st.integers(min_value=0, max_value=8),  # how many bytes to remove
    st.one_of(st.sampled_from(_FRAGMENTS), st.binary(max_size=4)),  # what to put there
)


def mutated(messages: Sequence[Message]) -> st.SearchStrategy[bytes]:
    """Valid messages back to back, then a few bytes removed or inserted: deep parser states."""
    wire = b"".join(m.wire() for m in messages)

    def apply(edits: list[tuple[int, int, bytes]]) -> bytes:
        out = wire
        for where, remove, insert in edits:
            at = where % (len(out) + 1)
            out = out[:at] + insert + out[at + remove :]
        return out

    return st.lists(_MUTATION, min_size=1, max_size=3).map(apply)


# -- helpers ----------------------------------------------------------------------------------


def feed_requests(pieces: list[bytes]) -> list[tuple[RequestHead, bytes, bool]]:
    """Each request's head, body and whether its end was seen; HttpError escapes."""
    parser = RequestParser(64 * 1024)
    out: list[tuple[RequestHead, bytes, bool]] = []
    for piece in pieces:
        parser.feed(piece)
        while parser.events:
            kind, value = parser.events.pop(0)
            if kind == EV_HEAD:
                assert isinstance(value, RequestHead)
                out.append((value, b"", False))
            elif kind == EV_DATA:
                assert isinstance(value, bytes)
                head, body, _ = out[-1]
                out[-1] = (head, body + value, False)
            else:
                assert kind == EV_END
                head, body, _ = out[-1]
                out[-1] = (head, body, True)
        if parser.upgrade_tail is not None:
            break  # the proxy stops parsing here too: the rest belongs to the tunnel
    return out


# -- arbitrary input --------------------------------------------------------------------------


@FUZZ
@given(data=st.one_of(noise, st.lists(requests, min_size=1, max_size=2).flatmap(mutated)), at=cuts)
def test_request_parser_never_raises_anything_else(data: bytes, at: list[int]) -> None:
    error: HttpError | None = None
    try:
        feed_requests(split(data, at))
    except HttpError as exc:
        error = exc
    if error is not None:
        assert 400 <= error.status < 600
        assert error.reason


@FUZZ
@given(
    data=st.one_of(noise, st.lists(responses, min_size=1, max_size=2).flatmap(mutated)),
    at=cuts,
    head_request=st.booleans(),
)
def test_response_parser_never_raises_anything_else(
    data: bytes, at: list[int], head_request: bool
) -> None:
    parser = ResponseParser(head_request=head_request)
    error: HttpError | None = None
    try:
        for piece in split(data, at):
            if parser.feed(piece) is not None:
                break  # 101: the rest is the tunnel's
            parser.body.clear()
            if parser.complete:
                parser.reset(head_request=head_request)
    except HttpError as exc:
        error = exc
    if error is not None:
        assert error.status == 502
        assert error.reason.startswith("upstream_")


@FUZZ
@given(data=st.one_of(noise, st.lists(requests, min_size=1, max_size=2).flatmap(mutated)), at=cuts)
def test_small_limits_hold_on_arbitrary_input(data: bytes, at: list[int]) -> None:
    """With tiny limits, no head that got through is over them."""
    parser = RequestParser(256, max_headers=4)
    try:
        for piece in split(data, at):
            parser.feed(piece)
            if parser.upgrade_tail is not None:
                break
    except HttpError:
        return
    for kind, value in parser.events:
        if kind == EV_HEAD:
            assert isinstance(value, RequestHead)
            assert len(value.headers) <= 4


# -- valid messages round-trip ----------------------------------------------------------------


@FUZZ
@given(batch=st.lists(requests, min_size=1, max_size=3), at=cuts)
def test_valid_requests_survive_any_chunking(batch: list[Request], at: list[int]) -> None:
    wire = b"".join(r.wire() for r in batch)
    parsed = feed_requests(split(wire, at))
    assert len(parsed) == len(batch)
    for sent, (head, body, ended) in zip(batch, parsed, strict=True):
        assert ended
        assert (head.method, head.target, head.version, head.host) == (
            sent.method,
            sent.target,
            b"1.1",
            sent.host,
        )
        assert head.headers == [(b"Host", sent.host), *sent.headers]
        assert body == sent.body
        if sent.framing == "length":
            assert head.content_length == len(sent.body)
            assert head.framing == (LENGTH if sent.body else NO_BODY)
        else:
            assert head.framing == CHUNKED


@FUZZ
@given(sent=requests)
def test_serialized_request_parses_back(sent: Request) -> None:
    [(head, _, _)] = feed_requests([sent.wire()])
    out = request_head_bytes(
        head, head.target, b"rid", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01", b"10.0.0.1"
    )
    [(again, _, _)] = feed_requests([out])
    assert (again.method, again.target, again.host) == (head.method, head.target, head.host)
    assert again.headers == head.headers
    assert (again.framing, again.content_length) == (head.framing, head.content_length)
    assert again.request_id == b"rid"


@FUZZ
@given(batch=st.lists(responses, min_size=1, max_size=3), at=cuts)
def test_valid_responses_survive_any_chunking(batch: list[Response], at: list[int]) -> None:
    """Responses one after the other on one pooled connection, each parsed after a reset."""
    parser = ResponseParser()
    for sent in batch:
        parser.reset(head_request=False)
        body = b""
        for piece in split(sent.wire(), at):
            assert not parser.complete
            assert parser.feed(piece) is None
            body += b"".join(parser.body)
            parser.body.clear()
        assert parser.complete
        assert not parser.extra
        *interim, final = parser.heads
        assert [h.status for h in interim] == sent.interim
        assert (final.status, final.reason, final.headers) == (
            sent.status,
            sent.reason,
            sent.headers,
        )
        assert body == sent.body
        assert final.framing == (CHUNKED if sent.framing != "length" else LENGTH)
        assert final.keep_alive
