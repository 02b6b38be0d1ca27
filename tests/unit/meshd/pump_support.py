"""Loopback sockets for the pump's tests: client <-TCP-> down [pump] up <-TCP-> server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from loopback import tcp_pair

from meshd.net.stream import SocketStream

__all__ = ["Topology", "tcp_pair", "topology"]


@dataclass
class Topology:
    """client <-TCP-> down [pump] up <-TCP-> server."""

    client: SocketStream
    down: SocketStream
    up: SocketStream
    server: SocketStream


@asynccontextmanager
async def topology() -> AsyncIterator[Topology]:
    """Two connected pairs as :class:`SocketStream`, all closed on the way out."""
    client, down = tcp_pair()
    up, server = tcp_pair()
    streams = Topology(
        SocketStream(client), SocketStream(down), SocketStream(up), SocketStream(server)
    )
    try:
        yield streams
    finally:
        for stream in (streams.client, streams.down, streams.up, streams.server):
            stream.close_nowait()
