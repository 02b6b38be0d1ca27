"""A :class:`~meshd.net.waits.ServedStream`'s calls, native for a :class:`SocketStream`.

Compiled with mypyc, a call through the ``ServedStream`` protocol is a generic method call (the
method looked up by name on the object's type, its arguments parsed by the wrapper): more than
the plain socket's own work for a ``recv``. The fast lane (:mod:`meshd.http.lane`) makes
several per request, so it calls these instead: a :class:`SocketStream` (the plain side of
every sidecar's hop) gets a native call, anything else (:class:`~meshd.net.tlsstream.TlsStream`,
interpreted) the call it got before. Each answers exactly what the stream's own method does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshd.net.stream import SocketStream

if TYPE_CHECKING:
    from meshd.net.waits import Reader, ServedStream

__all__ = ["may_read", "receive_nowait", "send_nowait", "serve_reads", "unread"]


def receive_nowait(stream: ServedStream) -> bytes | None:
    """``stream.receive_nowait()``."""
    if isinstance(stream, SocketStream):
        return stream.receive_nowait()
    return stream.receive_nowait()


def send_nowait(stream: ServedStream, data: bytes) -> int:
    """``stream.send_nowait(data)``."""
    if isinstance(stream, SocketStream):
        return stream.send_nowait(data)
    return stream.send_nowait(data)


def may_read(stream: ServedStream) -> bool:
    """``stream.may_read``."""
    if isinstance(stream, SocketStream):
        return stream.may_read
    return stream.may_read


def unread(stream: ServedStream) -> bool:
    """``stream.unread``."""
    if isinstance(stream, SocketStream):
        return stream.unread
    return stream.unread


def serve_reads(stream: ServedStream, reader: Reader | None) -> bool:
    """``stream.serve_reads(reader)``."""
    if isinstance(stream, SocketStream):
        return stream.serve_reads(reader)
    return stream.serve_reads(reader)
