"""meshd.http.strict and the limits of meshd.http.codec: values in, verdicts out."""

from __future__ import annotations

import pytest

from meshd.errors import PROXY_ERRORS, ProxyError
from meshd.http.codec import EV_DATA, EV_HEAD, HttpError, RequestHead, RequestParser, ResponseParser
from meshd.http.strict import removable, valid_host

GOOD_HOSTS = [
    b"api",
    b"api.test",
    b"api.test.",
    b"api-2.test:8080",
    b"127.0.0.1",
    b"127.0.0.1:0",
    b"[::1]",
    b"[2001:db8::1]:443",
    b"[::ffff:127.0.0.1]:80",
    b"xn--bcher-kva.example",
    b"a%41b.test",
    b"under_score.test:65535",
]
BAD_HOSTS = [
    b"",
    b"user@api.test",
    b"user:pw@api.test:80",
    b"api test",
    b" api.test",
    b"api.test/",
    b"api.test/../admin",
    b"..",
    b"a..b",
    b".api.test",
    b"api.test:",
    b"api.test:65536",
    b"api.test:123456",
    b"api.test:80:80",
    b"[::1",
    b"[::1]x",
    b"[not-ip]",
    b"[v1.fe]",
    b"[fe80::1%25eth0]",
    b"a%4",
    b"a%zz",
    b"api\\test",
    b"api.test#frag",
    b"api.test?q",
]


@pytest.mark.parametrize("host", GOOD_HOSTS)
def test_valid_host(host: bytes) -> None:
    assert valid_host(host)


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_invalid_host(host: bytes) -> None:
    assert not valid_host(host)


def test_protected_connection_tokens() -> None:
    for name in (b"host", b"content-length", b"transfer-encoding", b"x-request-id"):
        assert not removable(name)
    assert not removable(b"x-meshd-peer-identity")
    assert removable(b"x-hop")
    assert removable(b"keep-alive")


def test_every_error_has_its_status_from_the_table() -> None:
    for reason, status in PROXY_ERRORS.items():
        assert ProxyError(reason).status == status
        assert 400 <= status < 600
    assert HttpError("too_many_headers").status == 431
    assert HttpError("unsupported_http_version").status == 505
    assert HttpError("upstream_response_headers_too_large").status == 502
    with pytest.raises(KeyError):
        ProxyError("not_a_reason")


def feed_all(
    parser: RequestParser | ResponseParser, pieces: list[bytes] | tuple[bytes, ...]
) -> None:
    for piece in pieces:
        parser.feed(piece)


# -- request parser -----------------------------------------------------------------------------


def head_of(data: bytes, **limits: int) -> RequestHead:
    parser = RequestParser(limits.pop("max_head", 64 * 1024), limits.pop("max_headers", 100))
    assert not limits, limits
    parser.feed(data)
    kind, head = parser.events.pop(0)
    assert kind == EV_HEAD and isinstance(head, RequestHead)
    return head


def refusal(*pieces: bytes, **limits: int) -> tuple[int, str]:
    parser = RequestParser(limits.pop("max_head", 64 * 1024), limits.pop("max_headers", 100))
    assert not limits, limits
    with pytest.raises(HttpError) as info:
        feed_all(parser, pieces)
    return info.value.status, info.value.reason


@pytest.mark.parametrize(
    "data",
    [
        b"GET /\r\n\r\n",
        b"GET /\r\nHost: a\r\n\r\n",
        b"GET / HTTP/0.9\r\nHost: a\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    ],
)
def test_versions_other_than_1x_refused(data: bytes) -> None:
    assert refusal(data) == (505, "unsupported_http_version")


@pytest.mark.parametrize("cut", [6, 7])
def test_http09_line_refused_once_it_ends(cut: int) -> None:
    data = b"GET /a\r\n"
    assert refusal(data[:cut], data[cut:]) == (505, "unsupported_http_version")


def test_partial_request_line_is_not_taken_for_http09() -> None:
    parser = RequestParser(1024)
    for piece in (b"GET /a", b" HTTP/1.", b"1\r", b"\nHost: a\r\n"):
        parser.feed(piece)
    parser.feed(b"\r\n")
    assert next(k for k, _ in parser.events) == EV_HEAD


@pytest.mark.parametrize("host", [b"user@a", b"a b", b"a/../b", b"", b"a:99999", b"[::1"], ids=repr)
def test_invalid_host_header(host: bytes) -> None:
    assert refusal(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n") == (400, "invalid_host")


def test_http10_host_is_checked_when_present() -> None:
    assert refusal(b"GET / HTTP/1.0\r\nHost: u@a\r\n\r\n") == (400, "invalid_host")
    assert head_of(b"GET / HTTP/1.0\r\n\r\n").host is None


def test_connection_cannot_name_protected_headers() -> None:
    head = head_of(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Host, X-Meshd-Peer-Identity, X-Hop\r\n"
        b"X-Hop: 1\r\nX-Other: 2\r\n\r\n"
    )
    assert head.headers == [(b"Host", b"a"), (b"X-Other", b"2")]
    assert head.host == b"a"


def test_mesh_headers_are_dropped() -> None:
    head = head_of(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Meshd-Peer-Identity: spiffe://evil\r\n"
        b"x-meshd-whatever: 1\r\nX-Meshdx: kept\r\n\r\n"
    )
    assert head.headers == [(b"Host", b"a"), (b"X-Meshdx", b"kept")]


def test_header_count_limit() -> None:
    fields = b"".join(b"x-%d: v\r\n" % i for i in range(9))
    assert len(head_of(b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n", max_headers=10).headers)
    over = b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"x-9: v\r\n\r\n"
    assert refusal(over, max_headers=10) == (431, "too_many_headers")


def test_header_count_is_per_request() -> None:
    one = b"GET / HTTP/1.1\r\nHost: a\r\nx-1: v\r\n\r\n"
    parser = RequestParser(1024, max_headers=2)
    for _ in range(5):
        parser.feed(one)
    assert sum(1 for k, _ in parser.events if k == EV_HEAD) == 5


def test_request_trailers_are_bounded() -> None:
    parser = RequestParser(1024)
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    parser.feed(b"0\r\nx-trailer: ")
    with pytest.raises(HttpError) as info:
        feed_all(parser, [b"v" * 100] * 100)
    assert info.value.reason == "headers_too_large"


def test_many_chunks_are_not_trailers() -> None:
    parser = RequestParser(1024)
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(2000):  # chunk headers and data split across reads
        parser.feed(b"1\r\n")
        parser.feed(b"x\r\n")
    parser.feed(b"0\r\n\r\n")
    assert sum(len(v) for k, v in parser.events if k == EV_DATA and isinstance(v, bytes)) == 2000


# -- response parser ----------------------------------------------------------------------------


def response_refusal(
    *pieces: bytes, max_head_bytes: int = 64 * 1024, max_headers: int = 100
) -> str:
    parser = ResponseParser(max_head_bytes=max_head_bytes, max_headers=max_headers)
    with pytest.raises(HttpError) as info:
        feed_all(parser, pieces)
    return info.value.reason


def test_response_head_size_limit_in_one_read() -> None:
    data = b"HTTP/1.1 200 OK\r\nx-big: " + b"v" * 2000 + b"\r\n\r\n"
    assert response_refusal(data, max_head_bytes=1024) == "upstream_response_headers_too_large"


def test_endless_response_header_in_pieces() -> None:
    pieces = [b"HTTP/1.1 200 OK\r\nx-big: "] + [b"v" * 100] * 100
    assert response_refusal(*pieces, max_head_bytes=1024) == "upstream_response_headers_too_large"


def test_endless_reason_phrase() -> None:
    pieces = [b"HTTP/1.1 200 "] + [b"O" * 100] * 100
    assert response_refusal(*pieces, max_head_bytes=1024) == "upstream_response_headers_too_large"


def test_response_header_count_limit() -> None:
    data = b"HTTP/1.1 200 OK\r\n" + b"a: b\r\n" * 11 + b"content-length: 0\r\n\r\n"
    assert response_refusal(data, max_headers=10) == "upstream_response_headers_too_large"
    ok = ResponseParser(max_headers=12)
    ok.feed(data)
    assert ok.complete


def test_response_trailers_bounded() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nx-t: "
    pieces = [head] + [b"v" * 100] * 100
    assert response_refusal(*pieces, max_head_bytes=1024) == "upstream_response_headers_too_large"


def test_response_limits_follow_reset() -> None:
    parser = ResponseParser()
    data = b"HTTP/1.1 200 OK\r\n" + b"a: b\r\n" * 5 + b"content-length: 0\r\n\r\n"
    parser.feed(data)
    assert parser.complete
    parser.reset(head_request=False, max_headers=3)
    with pytest.raises(HttpError):
        parser.feed(data)


@pytest.mark.parametrize("version", [b"2.0", b"0.9"])
def test_response_version_other_than_1x_refused(version: bytes) -> None:
    data = b"HTTP/" + version + b" 200 OK\r\ncontent-length: 0\r\n\r\n"
    assert response_refusal(data) == "upstream_protocol_error"


def test_empty_line_between_requests_is_not_http09() -> None:
    parser = RequestParser(1024)
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok")
    parser.feed(b"\r\n")  # some clients end a body with an extra CRLF
    parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert sum(1 for k, _ in parser.events if k == EV_HEAD) == 2


def test_host_verdicts_are_the_same_cached_or_not() -> None:
    # The second call of each answers from the cache; long values are never cached.
    long_good = b".".join([b"a" * 60] * 5) + b":443"
    long_bad = long_good + b"/"
    assert len(long_good) > 260
    for _ in range(2):
        assert all(valid_host(h) for h in [*GOOD_HOSTS, long_good])
        assert not any(valid_host(h) for h in [*BAD_HOSTS, long_bad])
