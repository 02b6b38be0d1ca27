"""The TLS layer's errors and its peer guard: the part of it that stays interpreted.

:mod:`meshd.net.tls` is compiled with mypyc (pyproject's ``mypyc-modules``); what it can't
hold lives here: exception classes (they derive from :class:`~meshd.errors.MeshdError`) and
:class:`GuardedContext`, a subclass of ``ssl.SSLContext``. :mod:`meshd.net.tls` exports them
all, so users import them from there.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Protocol

from meshd.errors import MeshdError

if TYPE_CHECKING:
    from meshd.net.tls import TlsStream

__all__ = ["GuardedContext", "PeerGuard", "PeerRevoked", "TlsError", "TlsHandshakeError"]


class TlsError(MeshdError):
    """Base of the TLS layer's own errors."""


class TlsHandshakeError(TlsError):
    """The TLS handshake failed (bad certificate, protocol mismatch, reset, ...)."""


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
