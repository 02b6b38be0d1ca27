"""Listening sockets and the accept loop."""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable

import trio

from meshd.net.stream import SocketStream

ConnectionHandler = Callable[[SocketStream], Awaitable[None]]


def bind_tcp(
    host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024
) -> socket.socket:
    """A non-blocking listening socket on ``host:port``."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _name, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def accept_loop(
    sock: socket.socket, nursery: trio.Nursery, handler: ConnectionHandler
) -> None:
    """Accept connections on ``sock`` until cancelled, each handled in ``nursery``.

    Accepts in batches until the backlog is empty, so a burst costs one wakeup.
    """
    while True:
        try:
            conn, _addr = sock.accept()
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        except OSError as exc:
            # EMFILE/ENFILE/ECONNABORTED: back off briefly rather than spin.
            if exc.errno is not None and exc.errno in _TRANSIENT:
                await trio.sleep(0.01)
                continue
            raise
        nursery.start_soon(handler, SocketStream(conn))


_TRANSIENT = frozenset(
    {errno.ECONNABORTED, errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EPROTO}
)
