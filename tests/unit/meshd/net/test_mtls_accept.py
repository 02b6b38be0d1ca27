"""MeshTls.accept's handshake bound: a client that stalls is counted and closed by the sweep of
the sidecar's connections (``deadlines``)."""

from __future__ import annotations

import socket
import ssl

import pytest
import trio
from tls_certs import make_ca, spiffe

from meshd import mtls
from meshd.accesslog import AccessLog
from meshd.context import ProxyShared
from meshd.mtls import MeshTls
from meshd.net.stream import SocketStream
from meshd.net.tls import TlsHandshakeError, TlsStream
from meshd.net.tlsconfig import client_context, server_context
from meshd.stats import Stats

pytestmark = pytest.mark.timeout(10)


def _strict_tls() -> MeshTls:
    """Inbound mTLS in STRICT mode with a fresh CA's server certificate."""
    ca = make_ca()
    leaf = ca.service("server")
    tls = MeshTls()
    tls.mode = "strict"
    tls.server_strict = server_context(leaf.cert_pem, leaf.key_pem, ca.root_pem)
    return tls


def _shared() -> ProxyShared:
    return ProxyShared(stats=Stats(), access_log=AccessLog(enabled=False, sample_rate=0.0))


@pytest.mark.parametrize(
    "first_bytes",
    [b"", b"\x16\x03\x01\x00\x10"],  # silent; a ClientHello's record header, then nothing
    ids=["before-sniff", "mid-handshake"],
)
async def test_stalled_client_closed_by_the_deadline_sweep(
    monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery, first_bytes: bytes
) -> None:
    # No trio deadline of its own: ProxyShared.run_deadlines closes the connection, on its
    # clock, and the parked sniff or handshake ends.
    monkeypatch.setattr(mtls, "HANDSHAKE_TIMEOUT_S", 0.1)
    shared = _shared()
    await nursery.start(shared.run_deadlines)
    tls = _strict_tls()
    ours, theirs = socket.socketpair()
    with theirs:
        theirs.sendall(first_bytes)
        stream = SocketStream(ours)
        with trio.fail_after(5):
            assert await tls.accept(stream, shared.connections) is None
        assert tls.handshake_failed == 1
        assert stream.sock.fileno() == -1  # closed
        assert not shared.connections


def _client_handshake(sock: socket.socket, ctx: ssl.SSLContext) -> None:
    with ctx.wrap_socket(sock, server_hostname="server") as tls_sock:
        tls_sock.sendall(b"hello")
        tls_sock.recv(1)  # until the server closes


async def test_handshake_with_deadlines_admits_and_leaves_the_set() -> None:
    shared = _shared()
    ca = make_ca()
    server, client = ca.service("server"), ca.service("client")
    tls = MeshTls()
    tls.mode = "strict"
    tls.server_strict = server_context(server.cert_pem, server.key_pem, ca.root_pem)
    ctx = client_context(client.cert_pem, client.key_pem, ca.root_pem)
    ours, theirs = socket.socketpair()
    theirs.settimeout(5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, _client_handshake, theirs, ctx)
        with trio.fail_after(5):
            accepted = await tls.accept(SocketStream(ours), shared.connections)
        assert accepted is not None
        down, peer = accepted
        assert isinstance(down, TlsStream)
        assert peer == spiffe("client").encode()
        assert not shared.connections  # the handshake's bound is gone with it
        assert await down.receive_some() == b"hello"
        down.close_nowait()
    assert tls.handshake_failed == 0


async def test_permissive_plaintext_with_deadlines_served_as_is() -> None:
    shared = _shared()
    ca = make_ca()
    leaf = ca.service("server")
    tls = MeshTls()
    tls.mode = "permissive"
    tls.server_permissive = server_context(
        leaf.cert_pem, leaf.key_pem, ca.root_pem, require_client_cert=False
    )
    ours, theirs = socket.socketpair()
    with theirs:
        theirs.sendall(b"GET / HTTP/1.1\r\n\r\n")
        stream = SocketStream(ours)
        with trio.fail_after(5):
            accepted = await tls.accept(stream, shared.connections)
        assert accepted == (stream, None)
        assert not shared.connections
        stream.close_nowait()


class _Conn:
    """OpenSSL's connection as far as the handshake loop sees it: wants to read, once."""

    def __init__(self) -> None:
        self.calls = 0

    def do_handshake(self) -> None:
        self.calls += 1
        if self.calls > 1:
            raise AssertionError("OpenSSL called again on a closed descriptor")
        raise ssl.SSLWantReadError


async def test_handshake_closed_as_it_resumes_never_calls_openssl_again() -> None:
    # The deadline's close may come after the task was woken but before it ran: the wait
    # then returns normally, and OpenSSL, which keeps the descriptor's number (maybe another
    # socket's by then), must not be called again.
    ours, theirs = socket.socketpair()
    with theirs:
        ours.setblocking(False)
        conn = _Conn()
        stream = TlsStream(ours, conn)  # type: ignore[arg-type]

        async def woken_then_closed(sock: socket.socket) -> None:
            sock.close()

        stream._wait_readable = woken_then_closed
        with pytest.raises(TlsHandshakeError, match="connection closed"):
            await stream.do_handshake()
        assert conn.calls == 1
