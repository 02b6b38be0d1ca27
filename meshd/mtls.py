"""The sidecar's mTLS state: the mesh mode and TLS contexts built from the current identity.

Contexts are rebuilt whenever the identity changes (:meth:`MeshTls.use`) and picked up by
new connections only; open ones keep theirs. Inbound connections go through
:meth:`MeshTls.accept`: STRICT requires a client certificate from the mesh bundle,
PERMISSIVE sniffs the first bytes and does TLS only for a ClientHello. Without an identity,
or with ``mtls: disabled``, nothing changes: plaintext as before.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Protocol

import structlog
import trio

from meshd.net.stream import SocketStream, Stream
from meshd.net.tls import TlsError, TlsStream, tls_accept
from meshd.net.tlsconfig import client_context, peer_spiffe_id, server_context, sniff_tls

if TYPE_CHECKING:
    # cryptography (behind Identity) loads only when the sidecar has an identity.
    from meshd.identity.material import Identity

__all__ = ["IdentitySource", "MeshTls"]

log = structlog.get_logger("meshd.mtls")

#: Bound of an inbound handshake (and of the sniff before it).
HANDSHAKE_TIMEOUT_S = 10.0


class IdentitySource(Protocol):
    """What :class:`MeshTls` needs from an identity service."""

    @property
    def current(self) -> Identity | None:
        """The identity in force."""
        ...

    async def wait_changed(self, after: int) -> Identity:
        """The next identity after generation ``after``."""
        ...


class MeshTls:
    """Mode and contexts shared by every listener and pool of a sidecar."""

    def __init__(self) -> None:
        #: The snapshot's ``mtls`` ("strict", "permissive" or "disabled").
        self.mode = "disabled"
        self.identity: Identity | None = None
        self.server_strict: ssl.SSLContext | None = None
        self.server_permissive: ssl.SSLContext | None = None
        #: Client context for upstream sidecars (None: no identity, plaintext).
        self.client: ssl.SSLContext | None = None
        #: Plaintext connections refused by STRICT inbound listeners.
        self.plaintext_refused = 0
        #: Inbound handshakes that failed (bad or missing client certificate, ...).
        self.handshake_failed = 0

    def use(self, identity: Identity | None) -> None:
        """Build the contexts new connections use from ``identity`` (None: no TLS)."""
        self.identity = identity
        if identity is None:
            self.server_strict = self.server_permissive = self.client = None
            return
        cert, key, roots = identity.cert_pem, identity.key_pem, identity.bundle_pems
        self.server_strict = server_context(cert, key, roots, require_client_cert=True)
        self.server_permissive = server_context(cert, key, roots, require_client_cert=False)
        self.client = client_context(cert, key, roots)
        log.info("mTLS contexts built", spiffe_id=identity.spiffe_id)

    @property
    def inbound_active(self) -> bool:
        """Inbound listeners do (or may do) TLS now."""
        return self.mode != "disabled" and self.identity is not None

    async def run(self, source: IdentitySource) -> None:
        """Follow ``source``: rebuild the contexts on every new identity, until cancelled."""
        current = source.current
        self.use(current)
        generation = current.generation if current is not None else 0
        while True:
            identity = await source.wait_changed(generation)
            generation = identity.generation
            self.use(identity)

    async def accept(self, stream: SocketStream) -> tuple[Stream, bytes | None] | None:
        """The stream to serve and the client's SPIFFE ID, or None if the connection is refused.

        Closes ``stream`` when it refuses it.
        """
        strict = self.mode == "strict"
        ctx = self.server_strict if strict else self.server_permissive
        if ctx is None:
            return stream, None
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                is_tls = await sniff_tls(stream)
                if not is_tls:
                    if not strict:
                        return stream, None
                    self.plaintext_refused += 1
                    stream.reset()
                    return None
                tls: TlsStream = await tls_accept(stream, ctx)
        except (TlsError, trio.TooSlowError, trio.BrokenResourceError, OSError):
            self.handshake_failed += 1
            if stream.sock.fileno() != -1:  # tls_accept closed it already otherwise
                stream.close_nowait()
            return None
        der = tls.peer_certificate_der()
        spiffe_id = peer_spiffe_id(der) if der is not None else None
        return tls, spiffe_id.encode() if spiffe_id is not None else None
