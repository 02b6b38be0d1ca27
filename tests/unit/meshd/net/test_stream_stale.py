"""SocketStream.is_stale: a pooled connection's check before reuse, with real sockets."""

from __future__ import annotations

import socket
import struct

import pytest
import trio

from meshd.net.stream import ReadProbe, SocketStream

pytestmark = pytest.mark.timeout(10)


def _pair() -> tuple[SocketStream, socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    server.settimeout(5)
    return SocketStream(client), server


async def _wait_readable(stream: SocketStream) -> None:
    # Bounded: the peer's bytes or FIN are on loopback within milliseconds.
    probe = ReadProbe(stream.sock)
    for _ in range(500):
        if probe.ready():
            return
        await trio.sleep(0.01)
    raise AssertionError("nothing arrived")


async def test_idle_connection_is_not_stale_and_stays_so() -> None:
    stream, server = _pair()
    try:
        assert not stream.is_stale()
        assert not stream.is_stale()  # the probe, kept from the first check, still says so
    finally:
        stream.close_nowait()
        server.close()


async def test_unasked_bytes_make_it_stale() -> None:
    stream, server = _pair()
    try:
        server.sendall(b"HTTP/1.1 200 OK\r\n")
        await _wait_readable(stream)
        assert stream.is_stale()
        assert stream.sock.recv(100) == b"HTTP/1.1 200 OK\r\n"  # checked, not consumed
    finally:
        stream.close_nowait()
        server.close()


async def test_peer_close_and_reset_make_it_stale() -> None:
    closed, server = _pair()
    reset, server2 = _pair()
    try:
        assert not closed.is_stale()  # the probe exists before the close
        server.close()
        await _wait_readable(closed)
        assert closed.is_stale()
        server2.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server2.close()
        await _wait_readable(reset)
        assert reset.is_stale()
    finally:
        closed.close_nowait()
        reset.close_nowait()


async def test_closed_stream_is_stale() -> None:
    stream, server = _pair()
    try:
        assert not stream.is_stale()
        stream.close_nowait()
        assert stream.is_stale()
    finally:
        server.close()
