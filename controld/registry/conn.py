"""Connections of :class:`~controld.registry.httpserver.HTTPServer`: plain and TLS sockets.

Both are non-blocking sockets driven by ``trio.lowlevel`` waits. A TLS connection is an
``ssl.SSLSocket`` whose handshake ran in :func:`tls_accept` (bounded in time); its verified
client certificate, if any, is kept for the ASGI TLS extension.
"""

from __future__ import annotations

import socket
import ssl

import trio

__all__ = ["RECV_SIZE", "Closed", "Conn", "TlsConn", "tls_accept"]

RECV_SIZE = 65536


class Closed(Exception):
    """The peer went away."""


class Conn:
    """A connection: a plain socket, or (:class:`TlsConn`) an ``ssl.SSLSocket``."""

    __slots__ = ("client", "server", "sock")

    def __init__(self, sock: socket.socket, client: tuple[str, int], server: tuple[str, int]):
        self.sock = sock
        self.client = client
        self.server = server

    async def recv(self) -> bytes:
        """Some (application) bytes; ``b""`` at the end of the stream."""
        while True:
            try:
                return self.sock.recv(RECV_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError):
                await trio.lowlevel.wait_readable(self.sock)
            except ssl.SSLWantWriteError:  # TLS only
                await trio.lowlevel.wait_writable(self.sock)
            except OSError as exc:  # SSLError included
                raise Closed from exc

    async def send_all(self, data: bytes) -> None:
        """Write all of ``data`` (under TLS, a write that must wait is retried with the same
        bytes, as OpenSSL wants)."""
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, ssl.SSLWantWriteError):
                await trio.lowlevel.wait_writable(self.sock)
                continue
            except ssl.SSLWantReadError:  # TLS only
                await trio.lowlevel.wait_readable(self.sock)
                continue
            except OSError as exc:
                raise Closed from exc
            view = view[sent:]

    async def wait_hangup(self, scope: trio.CancelScope) -> None:
        """Cancel ``scope`` if the peer closes while a request is being served."""
        await trio.lowlevel.wait_readable(self.sock)
        try:
            # The raw socket's recv, also under TLS: a closed peer reads b"".
            peek = socket.socket.recv(self.sock, 1, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            peek = b""
        if not peek:
            scope.cancel()


class TlsConn(Conn):
    """A TLS connection after its handshake; ``client_cert`` is the verified client
    certificate (PEM) or ``None``."""

    __slots__ = ("client_cert",)

    def __init__(
        self,
        sock: ssl.SSLSocket,
        client: tuple[str, int],
        server: tuple[str, int],
        client_cert: str | None,
    ):
        super().__init__(sock, client, server)
        self.client_cert = client_cert


async def tls_accept(
    sock: socket.socket,
    ctx: ssl.SSLContext,
    client: tuple[str, int],
    server: tuple[str, int],
    timeout_s: float,
) -> TlsConn:
    """Run the server handshake on ``sock`` within ``timeout_s``; raises :class:`Closed`
    (the socket closed) when it fails or takes too long."""
    try:
        tls = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except OSError as exc:
        sock.close()
        raise Closed from exc
    try:
        with trio.move_on_after(timeout_s):
            return await _handshake(tls, client, server)
    except BaseException:
        tls.close()
        raise
    tls.close()
    raise Closed("TLS handshake timed out")


async def _handshake(
    tls: ssl.SSLSocket, client: tuple[str, int], server: tuple[str, int]
) -> TlsConn:
    while True:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            await trio.lowlevel.wait_readable(tls)
            continue
        except ssl.SSLWantWriteError:
            await trio.lowlevel.wait_writable(tls)
            continue
        except OSError as exc:
            raise Closed from exc
        der = tls.getpeercert(binary_form=True)
        pem = None if der is None else ssl.DER_cert_to_PEM_cert(der)
        return TlsConn(tls, client, server, pem)
