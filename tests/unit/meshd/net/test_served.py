"""meshd.net.served: a served stream's calls, native for SocketStream, the same answers."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from meshd.net import served
from meshd.net.stream import SocketStream

pytestmark = pytest.mark.timeout(30)


class Other:
    """Any other served stream (TlsStream's shape): each call recorded and answered."""

    may_read = True
    unread = True

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def receive_nowait(self, max_bytes: int | None = None) -> bytes | None:
        self.calls.append(("receive_nowait", max_bytes))
        return b"tls"

    def send_nowait(self, data: bytes) -> int:
        self.calls.append(("send_nowait", data))
        return 2

    def serve_reads(self, reader: object) -> bool:
        self.calls.append(("serve_reads", reader))
        return False


def test_a_socket_stream_answers_as_its_own_methods() -> None:
    a, b = socket.socketpair()
    with a, b:
        stream = SocketStream(a)
        assert served.receive_nowait(stream) is None  # nothing yet
        assert not served.may_read(stream) and not served.unread(stream)
        assert served.send_nowait(stream, b"ping") == 4
        assert b.recv(10) == b"ping"
        b.send(b"pong")
        assert served.receive_nowait(stream) == b"pong"
        assert served.may_read(stream) == stream.may_read
        assert served.unread(stream) == stream.unread
        assert served.serve_reads(stream, None)  # stopping always succeeds
        b.close()
        assert served.receive_nowait(stream) == b""


def test_any_other_stream_gets_its_own_methods_called() -> None:
    other: Any = Other()
    assert served.receive_nowait(other) == b"tls"
    assert served.send_nowait(other, b"x") == 2
    assert served.may_read(other) and served.unread(other)
    assert not served.serve_reads(other, None)
    assert other.calls == [
        ("receive_nowait", None),
        ("send_nowait", b"x"),
        ("serve_reads", None),
    ]
