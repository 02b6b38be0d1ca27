"""meshd.http.lookups: the remembered lookups and the version read from a message's bytes,
checked against what llhttp says (through the parsers)."""

from __future__ import annotations

import pytest

from meshd.http import lookups
from meshd.http.codec import EV_HEAD, HttpError, RequestHead, RequestParser, ResponseParser

pytestmark = pytest.mark.timeout(30)


def test_connection_tokens() -> None:
    assert lookups.connection_tokens(b" Keep-Alive ") is lookups.connection_tokens(b" Keep-Alive ")
    assert lookups.connection_tokens(b" Keep-Alive ") == (b"keep-alive",)
    assert lookups.connection_tokens(b"close, X-Foo ,") == (b"close", b"x-foo", b"")


def test_lower_table_lowercases_as_bytes_lower_does() -> None:
    every_byte = bytes(range(256))
    assert every_byte.translate(lookups.LOWER) == every_byte.lower()
    assert b"Content-Length".translate(lookups.LOWER) == b"content-length"


@pytest.mark.parametrize(
    "value",
    [b"0", b"12", b"007", b"18446744073709551615", b"9" * 40, b" 12", b"12 ", b"+5", b"1_2"],
)
def test_decimal_reads_as_int_does(value: bytes) -> None:
    assert lookups.decimal(value) == int(value)


@pytest.mark.parametrize("value", [b"", b"1a", b"-", b"\xff"])
def test_decimal_refuses_as_int_does(value: bytes) -> None:
    with pytest.raises(ValueError, match="invalid literal for int"):
        int(value)
    with pytest.raises(ValueError, match="invalid literal for int"):
        lookups.decimal(value)


def test_memos_are_bounded() -> None:
    memo: dict[bytes, int] = {}
    for i in range(lookups.MEMO_ENTRIES * 2 + 7):
        assert lookups.remember(memo, b"name-%d" % i, i) == i
        assert len(memo) <= lookups.MEMO_ENTRIES
    long_name = b"x" * 65
    assert lookups.remember(memo, long_name, 1) == 1
    assert long_name not in memo
    assert lookups.connection_tokens(b"Close" + b" " * 100) == (b"close",)  # not kept, right


@pytest.mark.parametrize(
    ("data", "method", "target", "version"),
    [
        (b"GET / HTTP/1.1\r\n", b"GET", b"/", b"1.1"),
        (b"POST /a?b HTTP/1.0\r\nHost: x\r\n", b"POST", b"/a?b", b"1.0"),
        (b"GET  / HTTP/1.1\r\n", b"GET", b"/", b""),  # not the layout assumed: ask llhttp
        (b"\r\nGET / HTTP/1.1\r\n", b"GET", b"/", b""),
        (b"GET / HTTP/1.", b"GET", b"/", b""),  # the line is not all there
        (b"GET /x HTTP/1.1\r\n", b"GET", b"/", b""),
    ],
)
def test_request_line_version(data: bytes, method: bytes, target: bytes, version: bytes) -> None:
    assert lookups.request_line_version(data, method, target) == version


@pytest.mark.parametrize(
    ("data", "version"),
    [
        (b"HTTP/1.1 200 OK\r\n", b"1.1"),
        (b"HTTP/1.0 ", b"1.0"),
        (b"HTTP/1", b""),
        (b"\r\nHTTP/1.1", b""),
    ],
)
def test_status_line_version(data: bytes, version: bytes) -> None:
    assert lookups.status_line_version(data) == version


def _heads(*pieces: bytes) -> list[RequestHead]:
    parser = RequestParser(64 * 1024)
    heads = []
    for piece in pieces:
        parser.feed(piece)
        heads += [h for kind, h in parser.events if kind == EV_HEAD and isinstance(h, RequestHead)]
        parser.events.clear()
    return heads


def test_each_request_gets_its_own_version() -> None:
    one = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
    ten = b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    # In one read (only the first starts it), over reads, after a leading CRLF, split lines.
    assert [h.version for h in _heads(one + ten + one)] == [b"1.1", b"1.0", b"1.1"]
    assert [h.version for h in _heads(ten, one, ten)] == [b"1.0", b"1.1", b"1.0"]
    assert [h.version for h in _heads(b"\r\n" + ten, b"\r\n" + one)] == [b"1.0", b"1.1"]
    assert [h.version for h in _heads(ten[:12], ten[12:], one[:3], one[3:])] == [b"1.0", b"1.1"]
    with pytest.raises(HttpError, match=r"HTTP/2\.0"):
        _heads(one + b"GET / HTTP/2.0\r\nHost: h\r\n\r\n")


def test_responses_get_their_own_version() -> None:
    parser = ResponseParser()
    continue_then_ok = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    parser.feed(continue_then_ok)
    assert [h.status for h in parser.heads] == [100, 200]
    parser = ResponseParser()
    with pytest.raises(HttpError, match=r"not an HTTP/1\.x response"):
        parser.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n")
