"""The sidecar's mTLS state: the mesh mode and TLS contexts built from the current identity.

Contexts are rebuilt whenever the identity changes (:meth:`MeshTls.use`) and picked up by
new connections only; open ones keep theirs. Inbound connections go through
:meth:`MeshTls.accept`: STRICT requires a client certificate from the mesh bundle,
PERMISSIVE sniffs the first bytes and does TLS only for a ClientHello. Without an identity,
or with ``mtls: disabled``, nothing changes: plaintext as before.

An identity that goes away (its leaf expired without a renewal) is not the same as never
having had one: the sidecar stops offering the certificate, STRICT inbound listeners refuse
every connection (never fall back to plaintext), PERMISSIVE ones take plaintext only, and
outbound mTLS presents no certificate, so STRICT peers refuse it at the handshake.
Open connections, pooled upstream ones included, keep the context they were made with.

Revoked certificates (the serials controld's bundle carries, :attr:`IdentitySource.revoked`)
are refused on every context built here, inbound and outbound, right after the handshake;
a new list also resets the open connections whose peer it revokes
(:class:`~meshd.net.revoked.RevokedPeers`).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Protocol

import structlog
import trio

from meshd.net.revoked import RevokedPeers
from meshd.net.stream import ProxyStream, SocketStream

if TYPE_CHECKING:
    # The TLS layer (ssl with OpenSSL's libraries, ~4 MB resident) loads only when a context
    # is built or an inbound handshake may happen: not in a sidecar without mTLS (issue 15);
    # cryptography (behind Identity) only when the sidecar has an identity.
    import ssl

    # meshd.context imports this module (ProxyShared.tls).
    from meshd.context import Connection
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

    @property
    def version(self) -> int:
        """Counts changes of :attr:`current` (new identities and drops) and of
        :attr:`revoked`."""
        ...

    @property
    def revoked(self) -> frozenset[int]:
        """Serials of revoked certificates."""
        ...

    async def wait_version(self, after: int) -> int:
        """The version, once it is above ``after``."""
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
        #: The identity went away (expired): see the module docstring.
        self.lost = False
        #: Inbound connections refused because the identity went away.
        self.no_identity_refused = 0
        #: Revoked peer certificates: refused after the handshake, their connections reset.
        self.revoked = RevokedPeers()

    def use(self, identity: Identity | None) -> None:
        """Build the contexts new connections use from ``identity`` (None: no identity;
        after having had one, the "lost" state of the module docstring)."""
        previous, self.identity = self.identity, identity
        if identity is None:
            self.server_strict = self.server_permissive = None
            if previous is not None:
                from meshd.net.tlsconfig import anonymous_client_context

                self.lost = True
                self.client = anonymous_client_context(previous.bundle_pems, guard=self.revoked)
                log.error(
                    "workload identity gone: not offering the expired certificate; "
                    "STRICT peers will refuse this sidecar's mTLS",
                    spiffe_id=previous.spiffe_id,
                )
            elif not self.lost:
                self.client = None
            return
        from meshd.net.tlsconfig import client_context, server_context

        cert, key, roots = identity.presented_pem, identity.key_pem, identity.bundle_pems
        guard = self.revoked
        self.server_strict = server_context(cert, key, roots, require_client_cert=True, guard=guard)
        self.server_permissive = server_context(
            cert, key, roots, require_client_cert=False, guard=guard
        )
        self.client = client_context(cert, key, roots, guard=guard)
        self.lost = False
        log.info("mTLS contexts built", spiffe_id=identity.spiffe_id, roots=len(roots))

    @property
    def inbound_active(self) -> bool:
        """Inbound listeners do (or may do) TLS now, or refuse for want of an identity."""
        return self.mode != "disabled" and (self.identity is not None or self.lost)

    async def run(self, source: IdentitySource) -> None:
        """Follow ``source``: rebuild the contexts on every change of its identity (a new
        one, or its loss), and apply its revoked serials, until cancelled."""
        self.use(source.current)
        self.apply_revoked(source.revoked)
        version = source.version
        while True:
            version = await source.wait_version(version)
            current = source.current
            if current is not self.identity:
                self.use(current)
            self.apply_revoked(source.revoked)

    def apply_revoked(self, serials: frozenset[int]) -> None:
        """Refuse peers presenting one of ``serials`` from now on; reset their connections."""
        if serials == self.revoked.serials:
            return
        closed = self.revoked.update(serials)
        log.info("revoked certificates applied", revoked=len(serials), connections_reset=closed)

    async def accept(
        self, stream: SocketStream, deadlines: set[Connection]
    ) -> tuple[ProxyStream, bytes | None] | None:
        """The stream to serve and the client's SPIFFE ID, or None if the connection is refused.

        Closes ``stream`` when it refuses it. The sniff and the handshake together get
        :data:`HANDSHAKE_TIMEOUT_S`: the connection waits in ``deadlines`` (the sidecar's
        :attr:`~meshd.context.ProxyShared.connections`, which
        :meth:`~meshd.context.ProxyShared.run_deadlines` sweeps), and passing its deadline
        closes it, which ends a parked sniff or handshake: no trio cancel scope per
        connection (entering and leaving one with a deadline is ~10 µs of interpreted code).
        """
        strict = self.mode == "strict"
        ctx = self.server_strict if strict else self.server_permissive
        if ctx is None:
            if not self.lost:
                return stream, None
            if strict:
                self.no_identity_refused += 1
                stream.reset()
                return None
        # The TLS layer, loaded once a context was built or the identity was lost.
        from meshd.net.tls import PeerRevoked, TlsError, TlsStream, tls_accept
        from meshd.net.tlsconfig import peer_spiffe_id, sniff_tls, sniffed_tls

        # The clock of ProxyShared.run_deadlines (meshd.context.now).
        bound = _HandshakeBound(stream, time.monotonic() + HANDSHAKE_TIMEOUT_S)
        deadlines.add(bound)
        tls: TlsStream | None = None
        try:
            # A ClientHello is usually there already (the acceptor waits for a first byte):
            # no coroutine for the sniff then.
            hello = sniffed_tls(stream.sock)
            if hello is None:
                hello = await sniff_tls(stream)
            if hello and ctx is not None:
                tls = await tls_accept(stream, ctx)
        except PeerRevoked as exc:
            log.warning("revoked peer refused", error=str(exc))
            return None  # closed by tls_accept; counted by the guard
        except (TlsError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            # ClosedResourceError: closed at its deadline.
            self.handshake_failed += 1
            if stream.sock.fileno() != -1:  # tls_accept closed it already otherwise
                stream.close_nowait()
            return None
        finally:
            deadlines.discard(bound)
        if tls is None:
            if not hello:
                if not strict:
                    return stream, None  # PERMISSIVE plaintext
                self.plaintext_refused += 1
            else:  # PERMISSIVE without an identity: no TLS to offer
                self.no_identity_refused += 1
            stream.reset()
            return None
        der = tls.peer_certificate_der()
        spiffe_id = peer_spiffe_id(der) if der is not None else None
        return tls, spiffe_id.encode() if spiffe_id is not None else None


class _HandshakeBound:
    """An inbound connection until its handshake is through, among the sidecar's
    :attr:`~meshd.context.ProxyShared.connections` (a :class:`~meshd.context.Connection`):
    its deadline passed, the socket is closed, which wakes the parked sniff or handshake
    with :class:`trio.ClosedResourceError`."""

    __slots__ = ("deadline", "stream")

    def __init__(self, stream: SocketStream, deadline: float) -> None:
        self.stream = stream
        self.deadline = deadline

    def expire(self) -> None:
        """Close the connection (no close_notify: no TLS session yet)."""
        self.deadline = math.inf
        self.stream.close_nowait()

    def drain(self) -> None:
        """Nothing: a handshake under way finishes, then its connection drains."""
