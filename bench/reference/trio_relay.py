"""The floor of a Trio proxy on this machine: relay bytes with no HTTP work at all.

Each downstream connection gets one upstream connection; a read from the client is written
upstream, one read of the reply is written back. That is only correct for one-read requests
and one-read responses (wrk's GETs against a small fixed body), which is all it is for: the
least Python any Trio-based proxy that parks a task per read must run per request, using the
same non-blocking sockets and ``trio.lowlevel`` waits as meshd's HTTP path. (meshd's L4 path
parks no task per read, see ``meshd/net/reactor.py``, and goes below it.) Not a proxy; a
yardstick.

Usage: ``python trio_relay.py LISTEN_PORT UPSTREAM_PORT``
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Awaitable, Callable

import trio


def nodelay(sock: socket.socket) -> socket.socket:
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def _relay(client: socket.socket, upstream_port: int) -> None:
    wait = trio.lowlevel.wait_readable
    upstream = nodelay(socket.create_connection(("127.0.0.1", upstream_port)))
    try:
        while True:
            await wait(client)
            data = client.recv(65536)
            if not data:
                return
            upstream.sendall(data)
            await wait(upstream)
            reply = upstream.recv(65536)
            if not reply:
                return
            client.sendall(reply)
    except OSError:
        return
    finally:
        client.close()
        upstream.close()


async def serve(listen_port: int, handle: Callable[[socket.socket], Awaitable[None]]) -> None:
    """Accept on 127.0.0.1:``listen_port``; each connection (non-blocking, TCP_NODELAY) goes
    to ``handle`` in a task of its own, until killed."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", listen_port))
    listener.listen(1024)
    listener.setblocking(False)
    async with trio.open_nursery() as nursery:
        while True:
            await trio.lowlevel.wait_readable(listener)
            try:
                client, _ = listener.accept()
            except BlockingIOError:
                continue
            nursery.start_soon(handle, nodelay(client))


async def main(listen_port: int, upstream_port: int) -> None:
    """Accept on 127.0.0.1:``listen_port`` and relay to ``upstream_port`` until killed."""
    await serve(listen_port, lambda client: _relay(client, upstream_port))


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), int(sys.argv[2]))
