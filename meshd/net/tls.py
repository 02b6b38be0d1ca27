"""mTLS connections: open them (connect or accept), run the handshake, admit the peer.

:func:`tls_connect` and :func:`tls_accept` return a handshaken
:class:`~meshd.net.tlsstream.TlsStream` (:mod:`meshd.net.tlsstream` says how it drives
OpenSSL under trio and which errors it raises). This module is the TLS layer's public
surface: it re-exports :class:`TlsStream`, :class:`TlsError` and :class:`TlsHandshakeError`.

Handshakes have no timeout of their own: callers bound them with a cancel scope. A
:class:`GuardedContext` carries a :class:`PeerGuard` that sees every handshake it completes
(both sides) and may refuse the peer, e.g. for a revoked certificate
(:mod:`meshd.net.revoked`). Contexts, identity checks and PERMISSIVE-mode sniffing live in
:mod:`meshd.net.tlsconfig`.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import Protocol

import trio

from meshd.net.sslconn import wrap
from meshd.net.stream import SocketStream, open_tcp
from meshd.net.tlsstream import TlsError, TlsHandshakeError, TlsStream

__all__ = [
    "GuardedContext",
    "PeerGuard",
    "PeerRevoked",
    "TlsError",
    "TlsHandshakeError",
    "TlsStream",
    "tls_accept",
    "tls_connect",
]


class PeerRevoked(TlsHandshakeError):
    """The peer presented a revoked certificate (the connection was closed)."""


class PeerGuard(Protocol):
    """Sees each handshake a :class:`GuardedContext` completes."""

    def admit(self, stream: TlsStream) -> None:
        """Accept the peer of ``stream`` (which may be kept to close it later) or raise
        :class:`PeerRevoked`."""
        ...


class GuardedContext(ssl.SSLContext):
    """An :class:`ssl.SSLContext` whose completed handshakes pass :attr:`peer_guard` (after
    OpenSSL's verification; resumed sessions too, whose peer certificate is the session's)."""

    peer_guard: PeerGuard | None = None


def _start(
    sock: socket.socket,
    ctx: ssl.SSLContext,
    *,
    server_side: bool,
    server_hostname: str | None = None,
    session: ssl.SSLSession | None = None,
    peer: tuple[str, int] | None = None,
) -> TlsStream:
    """The stream over ``sock``, before its handshake (``sock`` closed if that fails)."""
    try:
        # The C object keeps only a weak reference to `sock`: the TlsStream holds it.
        conn = wrap(ctx, sock, server_side=server_side, server_hostname=server_hostname)
    except BaseException:
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)
            sock.close()
        raise
    stream = TlsStream(sock, conn, peer)
    if session is not None:
        try:
            # A session from another context (the certificate rotated since) can't be
            # used: fall back to a full handshake.
            with contextlib.suppress(ValueError):
                conn.session = session
        except BaseException:
            _abandon(stream)
            raise
    return stream


def _admit(stream: TlsStream, ctx: ssl.SSLContext) -> None:
    """Pass the handshaken ``stream`` to ``ctx``'s guard, if it has one (may raise
    :class:`PeerRevoked`)."""
    if isinstance(ctx, GuardedContext) and ctx.peer_guard is not None:
        ctx.peer_guard.admit(stream)


def _abandon(stream: TlsStream) -> None:
    """Close a stream whose handshake failed (no close_notify on a half-done handshake)."""
    stream._broken = True
    stream.close_nowait()


async def tls_connect(
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    *,
    server_hostname: str | None = None,
    session: ssl.SSLSession | None = None,
) -> TlsStream:
    """Connect to ``host:port`` and run the client handshake.

    ``server_hostname`` only sets SNI (hostname checking is off in mesh contexts).
    ``session`` resumes an earlier session of the same context when the server agrees
    (see :attr:`TlsStream.session_reused`). Raises ``OSError`` if the TCP connect fails and
    :class:`TlsHandshakeError` if the handshake does. Note that in TLS 1.3 the client's
    handshake completes before the server has checked the client certificate: a rejection
    shows up on the first read as :class:`trio.BrokenResourceError`.
    """
    raw = await open_tcp(host, port)
    stream = _start(
        raw.sock, ctx, server_side=False, server_hostname=server_hostname, session=session
    )
    try:
        await stream.do_handshake()
        _admit(stream, ctx)
    except BaseException:
        _abandon(stream)
        raise
    return stream


async def tls_accept(sock: socket.socket | SocketStream, ctx: ssl.SSLContext) -> TlsStream:
    """Run the server handshake on an accepted connection, taking ownership of it.

    The socket is closed if the handshake fails or is cancelled.
    """
    peer = None
    if isinstance(sock, SocketStream):
        peer = sock.known_peer
        sock.release_waits()  # the TLS socket waits through Trio (none made yet, as a rule)
        sock = sock.sock  # non-blocking already
    else:
        sock.setblocking(False)
    # The handshake awaited here, not through a helper shared with tls_connect: every
    # wake-up of the handshake resumes one coroutine less.
    stream = _start(sock, ctx, server_side=True, peer=peer)
    try:
        await stream.do_handshake()
        _admit(stream, ctx)
    except BaseException:
        _abandon(stream)
        raise
    return stream
