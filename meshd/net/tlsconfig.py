"""TLS contexts for the mesh, SPIFFE identity checks on peers, and TLS sniffing.

Contexts are TLS 1.3 only (whose key exchange is always ephemeral; OpenSSL's client
offers an X25519 key share, so mesh peers agree on ECDHE, resumption included), verify
peers against the mesh's roots and leave hostname checking off: mesh identities are SPIFFE
URIs in the certificate's URI SAN, checked by :func:`check_peer` after the handshake, not
DNS names.

Treat a context as an immutable value: a new certificate or bundle means a new context,
which new connections use while open ones keep theirs. The one live part is an optional
``guard`` (:class:`~meshd.net.tls.PeerGuard`, e.g. :class:`~meshd.net.revoked.RevokedPeers`)
that every completed handshake passes, so revoking a peer needs no new context. Sessions
(and tickets) belong to the context that made them, so rotating also ends resumption with
the old certificate.
"""

from __future__ import annotations

import functools
import select
import socket
import ssl
from collections.abc import Iterable

import trio

from meshcore.pemfile import pem_path as _pem_path
from meshd.net.stream import SocketStream
from meshd.net.tls import GuardedContext, PeerGuard, TlsError, TlsStream

__all__ = [
    "PeerIdentityError",
    "anonymous_client_context",
    "check_peer",
    "client_context",
    "peer_spiffe_id",
    "server_context",
    "sniff_tls",
    "sniffed_tls",
]

Pem = bytes | str

# First bytes of a TLS record carrying a handshake message: content type 22, major 3,
# minor 1 (TLS 1.0, what ClientHellos put in the record layer) up to 4.
_TLS_HANDSHAKE = 0x16
_TLS_MAJOR = 0x03
_TLS_MINORS = frozenset({0x01, 0x02, 0x03, 0x04})
_SNIFF_RETRY_S = 0.005
#: Session tickets a server context sends after each handshake (OpenSSL's default is 2).
#: Each stateless ticket costs about 170 µs of server CPU (the session serialized, encrypted
#: and MACed): two were about 30% of a full mTLS handshake. A mesh client resumes with the
#: newest ticket it holds (``EndpointPool.session``, taken once per connection), so one is
#: enough; resumed handshakes get their one new ticket too.
SERVER_TICKETS = 1


class PeerIdentityError(TlsError):
    """The peer's certificate doesn't carry the SPIFFE ID we expected."""

    def __init__(self, expected: str, actual: str | None) -> None:
        super().__init__(f"peer is {actual or 'without SPIFFE ID'}, expected {expected}")
        self.expected = expected
        self.actual = actual


def server_context(
    cert_pem: Pem,
    key_pem: Pem,
    roots_pem: Pem | Iterable[Pem],
    *,
    require_client_cert: bool = True,
    guard: PeerGuard | None = None,
) -> ssl.SSLContext:
    """A TLS 1.3 server context presenting ``cert_pem`` (leaf, then any intermediates).

    A leaf alone makes OpenSSL build the chain it sends from ``roots_pem`` on every
    handshake, verifying the leaf's signature each time: pass the leaf with the root that
    issued it (:attr:`Identity.presented_pem <meshd.identity.material.Identity.presented_pem>`)
    and that chain is sent as it is, for the same bytes on the wire.

    With ``require_client_cert`` (STRICT mTLS) clients without a certificate verified by
    ``roots_pem`` are refused; without it a client certificate is still verified if sent.
    ``guard`` sees every completed handshake (and may refuse the client).
    """
    ctx = _guarded(True, guard)
    _common(ctx, cert_pem, key_pem, roots_pem)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    ctx.num_tickets = SERVER_TICKETS
    return ctx


def client_context(
    cert_pem: Pem,
    key_pem: Pem,
    roots_pem: Pem | Iterable[Pem],
    *,
    guard: PeerGuard | None = None,
) -> ssl.SSLContext:
    """A TLS 1.3 client context presenting ``cert_pem`` (as :func:`server_context` does) and
    requiring a server verified by ``roots_pem``; the server's identity is then checked with
    :func:`check_peer`. ``guard`` sees every completed handshake (and may refuse the server)."""
    ctx = _guarded(False, guard)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    _common(ctx, cert_pem, key_pem, roots_pem)
    return ctx


def anonymous_client_context(
    roots_pem: Pem | Iterable[Pem], *, guard: PeerGuard | None = None
) -> ssl.SSLContext:
    """A TLS 1.3 client context that verifies the server by ``roots_pem`` but presents no
    certificate: what a sidecar whose leaf expired uses, so that a STRICT peer refuses it
    at the handshake instead of it sending plaintext or an expired certificate."""
    ctx = _guarded(False, guard)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    _versions(ctx)
    ctx.load_verify_locations(cadata=_join_roots(roots_pem))
    return ctx


def _guarded(server: bool, guard: PeerGuard | None) -> ssl.SSLContext:
    protocol = ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT
    if guard is None:
        return ssl.SSLContext(protocol)
    ctx = GuardedContext(protocol)
    ctx.peer_guard = guard
    return ctx


def _versions(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_COMPRESSION
    # CPython sets this by default; without it an end of TCP with no close_notify (a
    # possible truncation) is an error rather than a quiet end of stream.
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF


def _common(ctx: ssl.SSLContext, cert_pem: Pem, key_pem: Pem, roots: Pem | Iterable[Pem]) -> None:
    _versions(ctx)
    ctx.load_verify_locations(cadata=_join_roots(roots))
    with _pem_path(_as_bytes(cert_pem)) as cert_path, _pem_path(_as_bytes(key_pem)) as key_path:
        ctx.load_cert_chain(cert_path, key_path)


def _as_bytes(pem: Pem) -> bytes:
    return pem.encode("ascii") if isinstance(pem, str) else pem


def _join_roots(roots: Pem | Iterable[Pem]) -> str:
    parts = [roots] if isinstance(roots, bytes | str) else list(roots)
    text = "\n".join(_as_bytes(part).decode("ascii").strip() for part in parts)
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError("no root certificate given")
    return text + "\n"


@functools.lru_cache(maxsize=1024)
def peer_spiffe_id(der: bytes) -> str | None:
    """The SPIFFE ID (the one ``spiffe://`` URI SAN) of a DER certificate, else None.

    None too when the certificate can't be parsed or carries several SPIFFE URIs (an
    X.509-SVID has exactly one). Cached by the DER bytes (the same bytes are the same
    certificate): parsing costs about 18 µs, a lookup 0.1 µs, and a sidecar sees the same
    few peer certificates over and over. The cache decides nothing about trust: OpenSSL
    verifies the chain and its validity on every handshake, and the revocation guard sees
    every one.
    """
    # cryptography loads only once a peer certificate is read (~8 MB the daemon otherwise carries).
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (ValueError, x509.ExtensionNotFound):
        return None
    ids = [
        uri
        for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.lower().startswith("spiffe://")
    ]
    return ids[0] if len(ids) == 1 else None


def check_peer(stream: TlsStream, expected_spiffe_id: str) -> str:
    """Return the peer's SPIFFE ID if it is ``expected_spiffe_id``; else raise
    :class:`PeerIdentityError` (also when the peer sent no certificate)."""
    der = stream.peer_certificate_der()
    actual = peer_spiffe_id(der) if der is not None else None
    if actual != expected_spiffe_id:
        raise PeerIdentityError(expected_spiffe_id, actual)
    return actual


async def sniff_tls(sock: socket.socket | SocketStream) -> bool:
    """True if the connection starts with a TLS handshake record (a ClientHello).

    Peeks (``MSG_PEEK``), so nothing is consumed. Waits for the first bytes with no limit of
    its own: bound it with the caller's cancel scope. An end of stream (or a shut down
    sending side) before three bytes counts as not TLS. Raises
    :class:`trio.BrokenResourceError` on a reset.
    """
    if isinstance(sock, SocketStream):
        sock = sock.sock
    else:
        sock.setblocking(False)  # accept() hands out blocking sockets
    while True:
        try:
            verdict = _sniff(sock)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        if verdict is not None:
            return verdict
        # A prefix of a record header: the socket stays readable, so wait by the clock.
        await trio.sleep(_SNIFF_RETRY_S)


def sniffed_tls(sock: socket.socket) -> bool | None:
    """:func:`sniff_tls`'s answer if the bytes that decide it are there already, else None
    (then ask :func:`sniff_tls`, which waits). ``sock`` is non-blocking."""
    try:
        return _sniff(sock)
    except BlockingIOError:
        return None


def _sniff(sock: socket.socket) -> bool | None:
    """One peek: whether the connection starts with a TLS handshake record, or None for a
    prefix of one (more bytes may come). Raises ``BlockingIOError`` when nothing came yet."""
    try:
        head = sock.recv(3, socket.MSG_PEEK)
    except BlockingIOError:
        raise
    except OSError as exc:
        raise trio.BrokenResourceError(f"connection broken: {exc.strerror or exc}") from exc
    if not head:
        return False
    if head[0] != _TLS_HANDSHAKE:
        return False
    if len(head) >= 2 and head[1] != _TLS_MAJOR:
        return False
    if len(head) >= 3:
        return head[2] in _TLS_MINORS
    # Unless the peer already shut down its side: then no more bytes will come.
    return False if _peer_shut_down(sock) else None


def _peer_shut_down(sock: socket.socket) -> bool:
    rdhup = getattr(select, "POLLRDHUP", 0)
    if not rdhup:
        return False
    poller = select.poll()
    poller.register(sock, rdhup)
    return bool(poller.poll(0))
