"""meshd.http.quick: the one-pass parse of plain heads agrees with llhttp, or steps aside.

Whatever ``request_head``/``response_head`` accept must be what the llhttp-only parsers
(``quick=False``) make of the same bytes, field for field; everything else must be handed on
(``None``), never refused or read differently. Generated heads mix the plain shape with the
inputs request smuggling lives on (obs-fold, bare CR and LF, control bytes, duplicate or signed
Content-Length, Transfer-Encoding, whitespace before the colon...).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.http.codec import (
    EV_END,
    EV_HEAD,
    NO_BODY,
    HttpError,
    MessageHead,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
)
from meshd.http.limits import DEFAULT_MAX_HEAD_BYTES, DEFAULT_MAX_HEADERS
from meshd.http.quick import request_head, response_fields, response_head
from meshd.http.serialize import response_head_bytes

pytestmark = pytest.mark.timeout(120)

CHECKS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
LIMITS = (DEFAULT_MAX_HEAD_BYTES, DEFAULT_MAX_HEADERS)

_COMMON = ("version", "headers", "framing", "content_length", "keep_alive", "upgrade")
_MORE = ("expect_continue", "connection_tokens", "xff", "request_id", "traceparent")


def fields(head: MessageHead) -> dict[str, object]:
    names = [*_COMMON, *_MORE]
    if isinstance(head, RequestHead):
        names += ["method", "target", "host"]
    if isinstance(head, ResponseHead):
        names += ["status", "reason"]
    return {name: getattr(head, name) for name in names}


# -- generated heads ---------------------------------------------------------------------------

_NAMES = [
    b"Host",
    b"host",
    b"HOST",
    b"Content-Length",
    b"content-length",
    b"Transfer-Encoding",
    b"Connection",
    b"Keep-Alive",
    b"Proxy-Connection",
    b"X-Forwarded-For",
    b"X-Request-Id",
    b"traceparent",
    b"X-Meshd-Identity",
    b"Upgrade",
    b"Expect",
    b"TE",
    b"Trailer",
    b"Accept",
    b"X-A",
    b"X A",
    b"X\x00A",
    b"X\x7fA",
    b"X\xe9",
    b"",
    b" Host",
    b'X"A',
]
_VALUES = [
    b"a",
    b"0",
    b"12",
    b"00",
    b"+5",
    b"-1",
    b"1 2",
    b"5, 5",
    b"99999999999999999999",
    b"chunked",
    b"gzip, chunked",
    b"close",
    b"Close",
    b"keep-alive",
    b"x-a",
    b"close, x-a",
    b"upgrade",
    b"100-continue",
    b"example.test",
    b"example.test:8080",
    b"a b",
    b"user@host",
    b"[::1]:80",
    b"",
]
_VALUE_BYTES = st.binary(min_size=0, max_size=8)
_SEPS = [b":", b": ", b":\t", b" :", b":  "]
_EOLS = [b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n", b" \r\n", b"\t\r\n"]


def mostly(plain: list[bytes], odd: list[bytes]) -> st.SearchStrategy[bytes]:
    """A plain piece 7 times in 8, else an odd one: most heads stay plain but for one spot."""
    return st.one_of(
        st.sampled_from(plain),
        st.sampled_from(plain),
        st.sampled_from(plain),
        st.sampled_from(plain),
        st.sampled_from(plain),
        st.sampled_from(plain),
        st.sampled_from(plain),
        st.sampled_from(odd),
    )


_PLAIN_NAMES = [
    b"X-Meshd-Identity",
    b"Accept",
    b"X-A",
    b"Keep-Alive",
    b"Connection",
    b"X-Forwarded-For",
    b"X-Request-Id",
    b"traceparent",
    b"Content-Length",
    b"Server",
    b"TE",
    b"Trailer",
]
_ODD_NAMES = [n for n in _NAMES if n not in _PLAIN_NAMES]
_PLAIN_VALUES = [b"a", b"0", b"12", b"keep-alive", b"x-a", b"close", b"a b", b"", b"\xe9t\xe9"]
_ODD_VALUES = [v for v in _VALUES if v not in _PLAIN_VALUES]


@st.composite
def field_lines(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(mostly(_PLAIN_NAMES, _ODD_NAMES))
        value = draw(st.one_of(mostly(_PLAIN_VALUES, _ODD_VALUES), _VALUE_BYTES))
        line = name + draw(mostly([b": ", b":"], _SEPS)) + value + draw(mostly([b"\r\n"], _EOLS))
        if draw(st.integers(0, 15)) == 0:
            line = b" folded" + line  # obs-fold / a line starting with whitespace
        lines.append(line)
    return b"".join(lines)


_METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]
_TARGET_PIECES = [b"/", b"a", b"%2F", b"?q=1", b"&b", b";p", b"@", b":", b"~", b"'"]
_ODD_TARGET = [b"#f", b"|", b"\x00", b" ", b"\x80", b'"', b"{", b"\\"]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(mostly(_METHODS, [b"CONNECT", b"get", b"FOO", b"G ET", b"PRI"]))
    target = b"".join(draw(st.lists(mostly(_TARGET_PIECES, _ODD_TARGET), max_size=5)))
    target = draw(mostly([b"/"], [b"", b"http://h/", b"*"])) + target
    version = draw(mostly([b"HTTP/1.1"], [b"HTTP/1.0", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 "]))
    host = draw(mostly([b"Host: example.test\r\n"], [b"Host: a b\r\n", b"", b"Host: [::1\r\n"]))
    start = method + b" " + target + b" " + version + b"\r\n"
    body = draw(st.binary(max_size=6))
    return start + host + draw(field_lines()) + b"\r\n" + body


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    status = draw(mostly([b"200", b"204", b"304", b"404"], [b"101", b"100", b"2x0", b"099"]))
    reason = draw(mostly([b" OK", b" ", b" Not\tFound", b" \xe9t\xe9"], [b"", b" a\rb", b" \x00"]))
    version = draw(mostly([b"HTTP/1.1"], [b"HTTP/1.0", b"HTTP/2", b"HTTP/1.1 "]))
    length = draw(st.integers(0, 20))
    body = draw(st.binary(min_size=length, max_size=length))
    framing = draw(st.sampled_from([b"Content-Length: %d\r\n" % length] * 2 + [b""]))
    return (
        version
        + b" "
        + status
        + reason
        + b"\r\n"
        + framing
        + draw(field_lines())
        + b"\r\n"
        + body
        + draw(mostly([b""], [b"\r\n", b"HTTP/1.1 200 OK\r\n", b"x"]))
    )


# -- the llhttp side ---------------------------------------------------------------------------


@dataclass
class Parsed:
    heads: list[dict[str, object]]
    body: bytes
    complete: bool
    extra: bool


def llhttp_request(data: bytes) -> list[dict[str, object]] | str:
    parser = RequestParser(*LIMITS, quick=False)
    try:
        parser.feed(data)
    except HttpError as exc:
        return exc.reason
    return [
        fields(h) for kind, h in parser.events if kind == EV_HEAD and isinstance(h, MessageHead)
    ]


def llhttp_response(data: bytes, head_request: bool) -> Parsed | str:
    parser = ResponseParser(head_request=head_request, quick=False)
    try:
        parser.feed(data)
    except HttpError as exc:
        return exc.reason
    heads = [fields(h) for h in parser.heads]
    return Parsed(heads, b"".join(parser.body), parser.complete, parser.extra)


# -- properties --------------------------------------------------------------------------------


@CHECKS
@given(requests())
def test_a_request_taken_is_what_llhttp_makes_of_it(data: bytes) -> None:
    got = request_head(data, *LIMITS)
    if got is None:
        return
    head, used = got
    assert data[used - 4 : used] == b"\r\n\r\n"
    assert llhttp_request(data[:used]) == [fields(head)]
    assert head.framing == NO_BODY and head.keep_alive


@CHECKS
@given(responses(), st.booleans())
def test_a_response_taken_is_what_llhttp_makes_of_it(data: bytes, head_request: bool) -> None:
    got = response_head(data, head_request, *LIMITS)
    if got is None:
        return
    head, end = got
    slow = llhttp_response(data[:end], head_request)
    assert isinstance(slow, Parsed), slow
    body = data[end - head.content_length : end] if head.framing != NO_BODY else b""
    assert slow == Parsed([fields(head)], body, True, False)


@CHECKS
@given(st.one_of(requests(), requests().map(lambda d: d + d)))
def test_the_request_parser_gives_what_llhttp_gives(data: bytes) -> None:
    """Through RequestParser.feed (pipelined requests too): the same events or the same error."""
    quick = RequestParser(*LIMITS)
    try:
        quick.feed(data)
    except HttpError as exc:
        got: list[dict[str, object]] | str = exc.reason
    else:
        got = [
            fields(h) for kind, h in quick.events if kind == EV_HEAD and isinstance(h, MessageHead)
        ]
    assert got == llhttp_request(data)


@CHECKS
@given(responses(), st.booleans())
def test_the_response_parser_gives_what_llhttp_gives(data: bytes, head_request: bool) -> None:
    """Through ResponseParser.feed: the same heads, body and completion; bytes after a complete
    response make the connection unusable at least as often."""
    quick = ResponseParser(head_request=head_request)
    try:
        quick.feed(data)
    except HttpError as exc:
        got: Parsed | str = exc.reason
    else:
        got = Parsed([fields(h) for h in quick.heads], b"".join(quick.body), quick.complete, False)
        extra = quick.extra
    slow = llhttp_response(data, head_request)
    if isinstance(slow, Parsed) and isinstance(got, Parsed):
        assert extra >= slow.extra
        slow.extra = False
    assert got == slow


# -- the plain shape is taken, the rest handed on ------------------------------------------------

PLAIN_REQUEST = b"GET /a/b?c=d HTTP/1.1\r\nHost: example.test:8080\r\nAccept: */*\r\n\r\n"
PLAIN_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n"
    b"hello world\n"
)


def test_plain_heads_are_taken() -> None:
    got = request_head(PLAIN_REQUEST + b"GET /next", *LIMITS)
    assert got is not None
    head, used = got
    assert used == len(PLAIN_REQUEST)
    assert (head.method, head.target, head.host) == (b"GET", b"/a/b?c=d", b"example.test:8080")
    assert head.headers == [(b"Host", b"example.test:8080"), (b"Accept", b"*/*")]
    got_response = response_head(PLAIN_RESPONSE, False, *LIMITS)
    assert got_response is not None
    response, end = got_response
    assert (response.status, response.reason, end) == (200, b"OK", len(PLAIN_RESPONSE))
    assert response.headers == [(b"Server", b"nginx")]
    assert response.content_length == 12 and response.keep_alive


def test_the_parsers_use_the_quick_pass() -> None:
    """The parsers' llhttp is never fed a plain head that came whole (its state stays new)."""
    parser = RequestParser(*LIMITS)
    parser.feed(PLAIN_REQUEST * 2)
    assert [kind for kind, _ in parser.events] == [EV_HEAD, EV_END] * 2
    assert parser._parser.get_http_version() == "0.0"  # llhttp has parsed nothing
    response = ResponseParser()
    response.feed(PLAIN_RESPONSE)
    assert response.complete and not response.extra and response.body == [b"hello world\n"]


@pytest.mark.parametrize(
    "data",
    [
        PLAIN_REQUEST.replace(b"Accept: */*", b"Accept: */*\r\n folded"),  # obs-fold
        PLAIN_REQUEST.replace(b"Accept: */*\r\n", b"Accept: */*\n"),  # bare LF
        PLAIN_REQUEST.replace(b"*/*", b"a\rb"),  # bare CR
        PLAIN_REQUEST.replace(b"*/*", b"a\x00b"),  # NUL
        PLAIN_REQUEST.replace(b"Accept:", b"Accept :"),  # whitespace before the colon
        PLAIN_REQUEST.replace(b"*/*", b"*/* "),  # trailing whitespace
        PLAIN_REQUEST.replace(b"Accept: */*", b"Content-Length: 5"),  # a body
        PLAIN_REQUEST.replace(b"Accept: */*", b"Content-Length: +0"),
        PLAIN_REQUEST.replace(b"Accept: */*", b"Transfer-Encoding: chunked"),
        PLAIN_REQUEST.replace(b"Accept: */*", b"Host: other.test"),  # a second Host
        PLAIN_REQUEST.replace(b"Accept: */*", b"Connection: close"),
        PLAIN_REQUEST.replace(b"Accept: */*", b"Expect: 100-continue"),
        PLAIN_REQUEST.replace(b"Accept: */*", b"Upgrade: websocket\r\nConnection: upgrade"),
        PLAIN_REQUEST.replace(b"HTTP/1.1", b"HTTP/1.0"),
        PLAIN_REQUEST.replace(b"/a/b", b"http://example.test/a/b"),
        PLAIN_REQUEST.replace(b"/a/b", b"/a b"),
        PLAIN_REQUEST.replace(b"GET", b"CONNECT"),
        PLAIN_REQUEST.replace(b"example.test:8080", b"user@example.test"),  # invalid Host
        PLAIN_REQUEST.replace(b"Host: example.test:8080\r\n", b""),  # no Host
        PLAIN_REQUEST[:-2],  # not whole
    ],
)
def test_requests_handed_to_llhttp(data: bytes) -> None:
    assert request_head(data, *LIMITS) is None


@pytest.mark.parametrize(
    "data",
    [
        PLAIN_RESPONSE.replace(b"Server: nginx", b"Server: nginx\r\n folded"),
        PLAIN_RESPONSE.replace(b"Server: nginx\r\n", b"Server: nginx\n"),
        PLAIN_RESPONSE.replace(b"nginx", b"ng\rinx"),
        PLAIN_RESPONSE.replace(b"nginx", b"ng\x7finx"),
        PLAIN_RESPONSE.replace(b"Server:", b"Server :"),
        PLAIN_RESPONSE.replace(b"Content-Length: 12", b"Content-Length: 12\r\nContent-Length: 12"),
        PLAIN_RESPONSE.replace(b"Content-Length: 12", b"Transfer-Encoding: chunked"),
        PLAIN_RESPONSE.replace(b"Content-Length: 12", b"Content-Length: 13"),  # body to come
        PLAIN_RESPONSE.replace(b"Content-Length: 12\r\n", b""),  # until the close
        PLAIN_RESPONSE.replace(b"HTTP/1.1 200", b"HTTP/1.0 200"),
        PLAIN_RESPONSE.replace(b"200 OK", b"101 Switching Protocols"),
        PLAIN_RESPONSE.replace(b"200 OK", b"100 Continue"),
        PLAIN_RESPONSE.replace(b"200 OK", b"200"),
        PLAIN_RESPONSE.replace(b"Connection: keep-alive", b"Proxy-Connection: close"),
    ],
)
def test_responses_handed_to_llhttp(data: bytes) -> None:
    assert response_head(data, False, *LIMITS) is None


def test_limits_hand_on() -> None:
    """Over the head's limits llhttp's path refuses it, with its reasons."""
    assert request_head(PLAIN_REQUEST, len(PLAIN_REQUEST) - 1, DEFAULT_MAX_HEADERS) is None
    assert request_head(PLAIN_REQUEST, DEFAULT_MAX_HEAD_BYTES, 1) is None
    assert response_head(PLAIN_RESPONSE, False, DEFAULT_MAX_HEAD_BYTES, 1) is None
    parser = RequestParser(DEFAULT_MAX_HEAD_BYTES, 1)
    with pytest.raises(HttpError) as refused:
        parser.feed(PLAIN_REQUEST)
    assert refused.value.reason == "too_many_headers"


def test_bytes_after_a_response_spoil_the_connection() -> None:
    parser = ResponseParser()
    parser.feed(PLAIN_RESPONSE + b"HTTP/1.1 200 OK\r\n")
    assert parser.complete and parser.extra
    head_response = ResponseParser(head_request=True)
    head_response.feed(PLAIN_RESPONSE)  # a body after the answer to HEAD
    assert head_response.complete and head_response.extra and not head_response.body


def test_a_clients_mesh_headers_are_dropped() -> None:
    got = request_head(PLAIN_REQUEST.replace(b"Accept", b"X-Meshd-Identity"), *LIMITS)
    assert got is not None
    assert got[0].headers == [(b"Host", b"example.test:8080")]


@pytest.mark.parametrize(("status", "head_request"), [(200, True), (204, False), (304, False)])
def test_a_bodiless_response_keeps_the_connection_as_llhttp_says(
    status: int, head_request: bool
) -> None:
    """Without Content-Length only a body that can't come lets llhttp keep the connection."""
    for length in (b"", b"Content-Length: 5\r\n"):
        data = b"HTTP/1.1 %d X\r\n%s\r\n" % (status, length)
        got = response_head(data, head_request, *LIMITS)
        assert got is not None
        slow = llhttp_response(data, head_request)
        assert isinstance(slow, Parsed)
        assert slow.heads == [fields(got[0])]


def _lines(message: bytes) -> tuple[list[bytes], list[int], bytes]:
    """A message's head lines other than Content-Length, its Content-Length values, its body."""
    head, _, body = message.partition(b"\r\n\r\n")
    lines, lengths = [], []
    for line in head.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon and name.lower() == b"content-length":
            lengths.append(int(value))
        else:
            lines.append(name + colon + value.lstrip(b" \t") if colon else line)
    return lines, lengths, body


@CHECKS
@given(responses(), st.booleans())
def test_a_whole_response_is_what_the_proxy_would_make_of_it(
    data: bytes, head_request: bool
) -> None:
    """``ResponseParser.whole`` (relayed as it came, less at most one hop-by-hop line, when
    nothing is edited) has the lines the serializer would write for its head, up to the place
    and case of Content-Length and the whitespace after a colon: nothing hop-by-hop, nothing
    after the response."""
    parser = ResponseParser(head_request=head_request)
    try:
        parser.feed(data)
    except HttpError:
        return
    whole = parser.whole
    if whole is None:
        return
    came = data.partition(b"\r\n\r\n")[0].split(b"\r\n")
    kept = whole.partition(b"\r\n\r\n")[0].split(b"\r\n")
    assert len(came) - len(kept) in {0, 1} and all(line in came for line in kept)
    (head,) = parser.heads
    made = response_head_bytes(head, head.framing, close=False) + b"".join(parser.body)
    assert _lines(whole) == _lines(made)


@CHECKS
@given(responses(), st.booleans())
def test_a_response_taken_as_sent_is_the_one_taken_whole(data: bytes, head_request: bool) -> None:
    """``as_sent``: the same head but for the fields to forward (checked, not kept; read back
    by ``response_fields``), and only where the response has its ``whole`` bytes."""
    kept = ResponseParser(head_request=head_request)
    sent = ResponseParser()
    sent.reset(head_request=head_request, as_sent=True)
    outcomes = []
    for parser in (kept, sent):
        try:
            parser.feed(data)
        except HttpError as exc:
            outcomes.append(exc.reason)
        else:
            outcomes.append("")
    assert outcomes[0] == outcomes[1]
    assert sent.whole == kept.whole
    if sent.whole is None:
        return
    assert [h.headers for h in sent.heads] == [[]]
    assert response_fields(sent.whole) == kept.heads[0].headers
    kept.heads[0].headers = []
    assert [fields(h) for h in sent.heads] == [fields(h) for h in kept.heads]
    assert (sent.body, sent.complete, sent.extra) == (kept.body, kept.complete, kept.extra)
