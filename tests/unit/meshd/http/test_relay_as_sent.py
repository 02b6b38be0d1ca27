"""meshd.http.relay: a plain response the proxy changes nothing in goes on as the bytes that came.

:class:`~meshd.http.relay.ResponseRelay` relays a response that :mod:`meshd.http.quick` took
whole (``ResponseParser.whole``) unserialized, less the one hop-by-hop field line (Connection,
Keep-Alive, TE, Trailer) it may have, unless anything else would be changed in it: more
hop-by-hop lines, fields a Connection names, a route's response header edit, the connection
closing after it, a request of HTTP/1.0. Then the head is made anew, as before.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from meshd.http.codec import RequestHead
from meshd.http.decide import HeaderEdit
from meshd.http.exchange import Exchange
from meshd.http.relay import ResponseRelay

pytestmark = pytest.mark.timeout(30)

PLAIN = b"HTTP/1.1 200 OK\r\nServer: up\r\nCONTENT-LENGTH: 6\r\nX-A:b\r\nDate: today\r\n\r\nhello\n"


def _connection(*, close_after: bool = False, draining: bool = False) -> Any:
    cfg = SimpleNamespace(max_response_head_bytes=65536, max_response_headers=100)
    c = SimpleNamespace(
        exchange=Exchange(0.0),
        cfg=cfg,
        close_after=close_after,
        shared=SimpleNamespace(draining=draining),
        finished=[],
    )
    c.exchange.body_done = True
    c.finish = c.finished.append
    return c


def _relay(
    c: Any, *, version: bytes = b"1.1", keep_alive: bool = True, edit: HeaderEdit | None = None
) -> ResponseRelay:
    head = RequestHead()
    head.method = b"GET"
    head.target = b"/"
    head.version = version
    head.keep_alive = keep_alive
    conn: Any = SimpleNamespace(reused=True, protocol_state=None)
    return ResponseRelay(c, head, conn, edit=edit, hold=None, try_scope=None)


def test_a_plain_response_goes_on_as_it_came() -> None:
    c = _connection()
    relay = _relay(c)
    out = relay.feed(PLAIN)
    assert out is PLAIN  # not even copied
    assert relay.done and c.exchange.code == 200 and c.exchange.bytes_out == 6
    relay.sent()
    assert c.exchange.head_sent
    assert relay.finish() and c.finished == [c.exchange]


def test_only_the_response_goes_on_not_bytes_after_it() -> None:
    c = _connection()
    relay = _relay(c)
    assert relay.feed(PLAIN + b"HTTP/1.1 200 OK\r\n") == PLAIN
    assert relay.done and not relay.finish()  # the connection is spoiled


@pytest.mark.parametrize("field", [b"Connection: keep-alive", b"Connection: close", b"TE: x"])
def test_one_hop_by_hop_line_is_cut_out(field: bytes) -> None:
    c = _connection()
    relay = _relay(c)
    out = relay.feed(PLAIN.replace(b"Date: today\r\n", b"Date: today\r\n%s\r\n" % field))
    assert out == PLAIN and relay.done and c.exchange.bytes_out == 6


def test_two_hop_by_hop_lines_are_both_dropped() -> None:
    data = PLAIN.replace(b"Server: up", b"Keep-Alive: timeout=5\r\nConnection: keep-alive")
    out = _relay(_connection()).feed(data)
    assert out is not None
    assert b"keep-alive" not in out.lower() and out.endswith(
        b"X-A: b\r\nDate: today\r\ncontent-length: 6\r\n\r\nhello\n"
    )


@pytest.mark.parametrize(
    "field",
    [
        b"Connection: keep-alive",
        b"Connection: x-a",
        b"Keep-Alive: timeout=5",
        b"TE: trailers",
        b"Trailer: x-t",
    ],
)
def test_hop_by_hop_fields_are_dropped(field: bytes) -> None:
    c = _connection()
    out = _relay(c).feed(PLAIN.replace(b"Date: today", field))
    assert out is not None
    head = out.partition(b"\r\n\r\n")[0].lower()
    assert field.partition(b":")[0].lower() + b":" not in head
    if field == b"Connection: x-a":
        assert b"x-a:" not in head  # the field it names too
    assert out.endswith(b"\r\n\r\nhello\n") and b"\r\ncontent-length: 6" in head


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"close_after": True}, b"connection: close\r\n"),
        ({"draining": True}, b"connection: close\r\n"),
        ({"keep_alive": False}, b"connection: close\r\n"),
        ({"version": b"1.0"}, b"connection: keep-alive\r\n"),
    ],
)
def test_the_head_is_made_anew_when_the_connection_header_changes(
    settings: dict[str, Any], expected: bytes
) -> None:
    c = _connection(
        close_after=settings.get("close_after", False), draining=settings.get("draining", False)
    )
    relay = _relay(
        c, version=settings.get("version", b"1.1"), keep_alive=settings.get("keep_alive", True)
    )
    out = relay.feed(PLAIN)
    assert out is not None and out != PLAIN
    assert expected in out.partition(b"\r\n\r\n")[0] + b"\r\n"


def test_a_response_header_edit_applies() -> None:
    edit = HeaderEdit(frozenset({b"server"}), ((b"x-b", b"c"),))
    out = _relay(_connection(), edit=edit).feed(PLAIN)
    assert out is not None
    head = out.partition(b"\r\n\r\n")[0]
    assert b"Server" not in head and b"x-b: c" in head and b"X-A: b" in head


def test_a_response_llhttp_parses_is_made_anew() -> None:
    """A head in pieces (or any other that the one-pass parse hands on)."""
    c = _connection()
    relay = _relay(c)
    assert relay.feed(PLAIN[:20]) is None
    out = relay.feed(PLAIN[20:])
    assert out is not None and out != PLAIN and b"X-A: b\r\n" in out


def test_the_head_is_made_anew_with_its_fields_when_the_client_side_closes_meanwhile() -> None:
    """The relay asked the parse for the bytes as they came (the fields only checked), then
    the connection came to close before the response: its fields are read back."""
    c = _connection()
    relay = _relay(c)
    assert relay.rp.as_sent
    c.close_after = True
    out = relay.feed(PLAIN.replace(b"Date: today", b"Connection: keep-alive"))
    assert out == (
        b"HTTP/1.1 200 OK\r\nServer: up\r\nX-A: b\r\ncontent-length: 6\r\nconnection: close\r\n"
        b"\r\nhello\n"
    )


@pytest.mark.parametrize(
    ("settings", "as_sent"),
    [
        ({}, True),
        ({"close_after": True}, False),
        ({"draining": True}, False),
        ({"keep_alive": False}, False),
        ({"version": b"1.0"}, False),
        ({"edit": HeaderEdit(frozenset(), ((b"x-b", b"c"),))}, False),
    ],
)
def test_the_parse_keeps_the_fields_unless_the_response_goes_as_it_came(
    settings: dict[str, Any], as_sent: bool
) -> None:
    c = _connection(
        close_after=settings.get("close_after", False), draining=settings.get("draining", False)
    )
    relay = _relay(
        c,
        version=settings.get("version", b"1.1"),
        keep_alive=settings.get("keep_alive", True),
        edit=settings.get("edit"),
    )
    assert relay.rp.as_sent is as_sent
    relay.feed(PLAIN)
    head = relay.final
    assert head is not None
    if as_sent:
        assert head.headers == []  # checked, not kept: the bytes went as they came
    else:
        assert head.headers[:3] == [(b"Server", b"up"), (b"X-A", b"b"), (b"Date", b"today")]
