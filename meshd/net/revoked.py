"""Refusing revoked peers: new handshakes and the connections already open.

controld publishes the serials of revoked leaves with its trust bundle
(:attr:`meshd.identity.client.Bundle.revoked`). :class:`RevokedPeers` is the
:class:`~meshd.net.tls.PeerGuard` of every mesh context a sidecar builds
(:mod:`meshd.mtls`): after each handshake, inbound or outbound, the peer's certificate serial
is looked up and a revoked peer is refused (:class:`~meshd.net.tls.PeerRevoked`). The streams
it admits are kept (weakly, so a finished connection is simply forgotten); a new list of
revoked serials resets the open ones whose peer is now revoked, so a revoked sidecar loses its
keep-alive connections too, not only new ones.

Serials are unique per CA (random, 159 bits), so the serial alone names a leaf.
"""

from __future__ import annotations

import functools
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the TLS layer loads with the first context (meshd.mtls), not before
    from meshd.net.tls import TlsStream

__all__ = ["RevokedPeers", "certificate_serial"]


@functools.lru_cache(maxsize=1024)
def certificate_serial(der: bytes) -> int | None:
    """The serial of a DER certificate (``None`` when it doesn't parse); cached, since a
    sidecar sees the same few peer certificates over and over."""
    # cryptography loads only once a peer certificate is looked at (as in tlsconfig).
    from cryptography import x509

    try:
        return x509.load_der_x509_certificate(der).serial_number
    except ValueError:
        return None


class RevokedPeers:
    """The revoked serials in force and the TLS streams open to mesh peers."""

    def __init__(self) -> None:
        self._serials: frozenset[int] = frozenset()
        # Weak references to the open streams, each dropped by its own callback (the set's
        # C method, not a Python one as WeakSet's) once its stream is gone.
        self._open: set[weakref.ref[TlsStream]] = set()
        #: Handshakes refused because the peer's certificate is revoked.
        self.refused = 0
        #: Open connections reset because their peer's certificate was revoked.
        self.reset = 0

    @property
    def serials(self) -> frozenset[int]:
        """The revoked serials in force."""
        return self._serials

    def admit(self, stream: TlsStream) -> None:
        """Refuse the peer of a fresh handshake if revoked (:class:`PeerRevoked`), else keep
        the stream to close it should the peer be revoked later."""
        der = stream.peer_certificate_der()
        if der is None:
            return
        if self._serials:
            serial = certificate_serial(der)
            if serial in self._serials:
                from meshd.net.tls import PeerRevoked  # loaded: a handshake called this

                self.refused += 1
                raise PeerRevoked(f"TLS peer certificate (serial {serial:x}) is revoked")
        refs = self._open
        refs.add(weakref.ref(stream, refs.discard))

    def update(self, serials: frozenset[int]) -> int:
        """Put ``serials`` in force; reset the open streams whose peer is in it. How many."""
        if serials == self._serials:
            return 0
        self._serials = serials
        if not serials:
            return 0
        closed = 0
        for ref in list(self._open):
            stream = ref()
            if stream is None:
                continue
            der = stream.peer_certificate_der()
            if der is not None and certificate_serial(der) in serials:
                self._open.discard(ref)
                stream.reset()
                closed += 1
        self.reset += closed
        return closed

    def __len__(self) -> int:
        """Streams tracked (open or not yet collected)."""
        return len(self._open)
