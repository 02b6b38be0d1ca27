"""Revoked peers refused after the handshake (both sides, resumption too) and their open
connections reset: real TLS over 127.0.0.1 with a test CA."""

from __future__ import annotations

import socket
import ssl

import pytest
import trio
from cryptography import x509
from tls_certs import Leaf, MiniCA, make_ca

from meshd.net.listen import bind_tcp
from meshd.net.revoked import RevokedPeers
from meshd.net.tls import PeerRevoked, TlsHandshakeError, TlsStream, tls_accept, tls_connect
from meshd.net.tlsconfig import client_context, server_context

pytestmark = pytest.mark.timeout(60)


def serial(leaf: Leaf) -> int:
    return x509.load_pem_x509_certificate(leaf.cert_pem).serial_number


class EchoServer:
    """Accepts on 127.0.0.1 with ``ctx``; echoes; records refused handshakes."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.listener = bind_tcp("127.0.0.1", 0)
        self.port = int(self.listener.getsockname()[1])
        self.refused: list[BaseException] = []

    async def serve(self, nursery: trio.Nursery) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.listener)
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                continue
            nursery.start_soon(self._handle, conn)

    async def _handle(self, conn: socket.socket) -> None:
        try:
            stream = await tls_accept(conn, self.ctx)
        except TlsHandshakeError as exc:
            self.refused.append(exc)
            return
        try:
            while data := await stream.receive_some():
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()


async def round_trip(stream: TlsStream) -> bytes:
    await stream.send_all(b"ping")
    with trio.fail_after(10):
        return await stream.receive_some()


async def test_server_refuses_a_revoked_client_resumed_or_not() -> None:
    ca: MiniCA = make_ca()
    server_leaf, good, bad = ca.service("api"), ca.service("web"), ca.service("web")
    guard = RevokedPeers()
    server = EchoServer(
        server_context(server_leaf.cert_pem, server_leaf.key_pem, ca.root_pem, guard=guard)
    )
    bad_ctx = client_context(bad.cert_pem, bad.key_pem, ca.root_pem)
    good_ctx = client_context(good.cert_pem, good.key_pem, ca.root_pem)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve, nursery)
        # Before the revocation: a session the revoked client could resume later.
        first = await tls_connect("127.0.0.1", server.port, bad_ctx)
        assert await round_trip(first) == b"ping"
        session = first.session
        assert session is not None
        kept = await tls_connect("127.0.0.1", server.port, good_ctx)
        assert await round_trip(kept) == b"ping"

        # The open connection of the revoked client is reset; the other one stays.
        assert guard.update(frozenset({serial(bad)})) == 1
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
            await round_trip(first)
        assert await round_trip(kept) == b"ping"

        # New handshakes of the revoked client are refused, a resumed one too.
        for resume in (None, session):
            refused = await tls_connect("127.0.0.1", server.port, bad_ctx, session=resume)
            with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
                await round_trip(refused)
            refused.close_nowait()
        assert len(server.refused) == 2
        assert all(isinstance(exc, PeerRevoked) for exc in server.refused)
        assert guard.refused == 2 and guard.reset == 1
        fresh = await tls_connect("127.0.0.1", server.port, good_ctx)
        assert await round_trip(fresh) == b"ping"
        for stream in (first, kept, fresh):
            stream.close_nowait()
        nursery.cancel_scope.cancel()
    server.listener.close()


async def test_client_refuses_a_revoked_server_and_drops_its_pooled_connection() -> None:
    ca = make_ca()
    revoked_server, client = ca.service("api"), ca.service("web")
    server = EchoServer(
        server_context(revoked_server.cert_pem, revoked_server.key_pem, ca.root_pem)
    )
    guard = RevokedPeers()
    ctx = client_context(client.cert_pem, client.key_pem, ca.root_pem, guard=guard)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve, nursery)
        pooled = await tls_connect("127.0.0.1", server.port, ctx)
        assert await round_trip(pooled) == b"ping"
        assert len(guard) == 1
        assert guard.update(frozenset({serial(revoked_server)})) == 1
        assert pooled.is_stale()  # a pool drops it instead of reusing it
        pooled.close_nowait()
        with pytest.raises(PeerRevoked, match="revoked"):
            await tls_connect("127.0.0.1", server.port, ctx)
        # Unrevoked again (the leaf expired from the list): connections work.
        guard.update(frozenset())
        again = await tls_connect("127.0.0.1", server.port, ctx)
        assert await round_trip(again) == b"ping"
        again.close_nowait()
        nursery.cancel_scope.cancel()
    server.listener.close()


class _Admitted:
    """What RevokedPeers keeps of a stream: its peer's certificate; weakly referenced."""

    __slots__ = ("__weakref__", "der", "was_reset")

    def __init__(self, der: bytes) -> None:
        self.der = der
        self.was_reset = False

    def peer_certificate_der(self) -> bytes:
        return self.der

    def reset(self) -> None:
        self.was_reset = True


def test_streams_gone_are_forgotten_and_open_ones_reset() -> None:
    ca = make_ca()
    revoked, kept = ca.service("api"), ca.service("web")
    guard = RevokedPeers()
    streams = [_Admitted(revoked.cert_der), _Admitted(kept.cert_der), _Admitted(revoked.cert_der)]
    for admitted in streams:
        guard.admit(admitted)  # type: ignore[arg-type]
    assert len(guard) == 3
    del admitted
    streams.pop()  # the connection ended: nothing keeps its stream
    assert len(guard) == 2
    assert guard.update(frozenset({serial(revoked)})) == 1
    assert [stream.was_reset for stream in streams] == [True, False]
    assert len(guard) == 1
