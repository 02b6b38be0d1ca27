"""Loopback sockets for the pump's tests: client <-TCP-> down [pump] up <-TCP-> server."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from meshd.net.stream import SocketStream


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected (client, server) pair of TCP sockets on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        try:
            server, _addr = listener.accept()
        except BaseException:
            client.close()
            raise
    return client, server


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
