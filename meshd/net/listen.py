"""Listening sockets (the accept loop is :class:`meshcore.net.accept.Acceptor`)."""

from __future__ import annotations

import socket


def bind_tcp(
    host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024
) -> socket.socket:
    """A non-blocking listening socket on ``host:port`` (``TCP_NODELAY``, see
    :func:`nodelay_listener`)."""
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
        nodelay_listener(sock)
    except BaseException:
        sock.close()
        raise
    return sock


def nodelay_listener(sock: socket.socket) -> None:
    """Set ``TCP_NODELAY`` on a listening TCP socket: Linux copies it to every socket
    accepted from it, so connections don't each set it again (a system call each)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
