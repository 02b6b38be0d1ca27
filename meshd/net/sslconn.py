"""OpenSSL's connection object as :class:`~meshd.net.tls.TlsStream` drives it.

The object is the C one behind ``ssl.SSLSocket`` (``_ssl._SSLSocket``), made by the
context's ``_wrap_socket`` as ``SSLContext.wrap_socket`` makes it, and used without the
``SSLSocket`` wrapper: that wrapper duplicates the socket object and checks it with four
system calls (``SO_TYPE``, ``getsockname``, ``getpeername``, a ``FIONBIO`` ioctl) per
connection, sets the timeout again (one more ioctl) after every ``do_handshake`` call, and adds
two Python calls to every read (about 14 µs of a full handshake's CPU, 1 µs per read). The C
object's methods are the ones ``SSLSocket`` calls, with the same errors and semantics; it
reads and writes the socket's descriptor, non-blocking when the socket is.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any, Protocol

__all__ = ["CLOSED", "SslConnection", "os_reason", "ssl_reason", "wrap"]


class SslConnection(Protocol):
    """What :class:`~meshd.net.tls.TlsStream` uses of ``_ssl._SSLSocket`` (no stubs for it)."""

    session: ssl.SSLSession | None
    session_reused: bool

    def do_handshake(self) -> None:
        """``SSL_do_handshake``; raises ``SSLWantReadError``/``SSLWantWriteError``."""
        ...

    def read(self, size: int, /) -> bytes:
        """``SSL_read``: decrypted bytes, ``b""`` after the peer's ``close_notify``."""
        ...

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        """``SSL_write``: how many bytes went (all of them, or an error)."""
        ...

    def pending(self) -> int:
        """Decrypted bytes OpenSSL holds."""
        ...

    def shutdown(self) -> Any:
        """``SSL_shutdown``: send ``close_notify``; returns once the peer's came too."""
        ...

    def getpeercert(self, binary_form: bool = False, /) -> Any:
        """The peer's certificate (DER with ``binary_form``)."""
        ...


def wrap(
    ctx: ssl.SSLContext, sock: socket.socket, *, server_side: bool, server_hostname: str | None
) -> SslConnection:
    """OpenSSL's connection over ``sock`` (connected; its timeout decides blocking).

    The object keeps only a weak reference to ``sock``: the caller must hold ``sock`` as long
    as it uses the connection, and must stop using the connection (drop it for
    :data:`CLOSED`) before closing ``sock``, whose descriptor number OpenSSL keeps.
    """
    hostname = server_hostname.encode("idna").decode("ascii") if server_hostname else None
    make = ctx._wrap_socket  # type: ignore[attr-defined]
    conn: SslConnection = make(sock, server_side, hostname, owner=None, session=None)
    return conn


class _Closed:
    """Stands in for the connection of a closed stream: OpenSSL's state goes at close, and
    nothing can reach the descriptor number, which may be another socket's by now."""

    session: ssl.SSLSession | None = None
    session_reused = False

    def do_handshake(self) -> None:
        raise ValueError("TLS stream was closed")

    def read(self, size: int, /) -> bytes:
        raise ValueError("TLS stream was closed")

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        raise ValueError("TLS stream was closed")

    def pending(self) -> int:
        return 0

    def shutdown(self) -> Any:
        raise ValueError("TLS stream was closed")

    def getpeercert(self, binary_form: bool = False, /) -> Any:
        raise ValueError("TLS stream was closed")


#: The connection of every closed stream.
CLOSED: SslConnection = _Closed()


def os_reason(exc: OSError | ValueError) -> str:
    """Why an OS-level call failed, for an error message."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def ssl_reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason for ``exc``, readable ('certificate verify failed: ...')."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLEOFError):
        return "connection closed without close_notify"
    if exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc)
