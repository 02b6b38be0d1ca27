"""MeshTls.accept's handshake bound: a client that stalls is counted and closed."""

from __future__ import annotations

import socket

import pytest
from tls_certs import make_ca

from meshd import mtls
from meshd.mtls import MeshTls
from meshd.net.stream import SocketStream
from meshd.net.tlsconfig import server_context

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    "first_bytes",
    [b"", b"\x16\x03\x01\x00\x10"],  # silent; a ClientHello's record header, then nothing
    ids=["before-sniff", "mid-handshake"],
)
async def test_stalled_client_times_out(
    monkeypatch: pytest.MonkeyPatch, first_bytes: bytes
) -> None:
    monkeypatch.setattr(mtls, "HANDSHAKE_TIMEOUT_S", 0.1)
    ca = make_ca()
    leaf = ca.service("server")
    tls = MeshTls()
    tls.mode = "strict"
    tls.server_strict = server_context(leaf.cert_pem, leaf.key_pem, ca.root_pem)
    ours, theirs = socket.socketpair()
    with theirs:
        theirs.sendall(first_bytes)
        stream = SocketStream(ours)
        assert await tls.accept(stream) is None
        assert tls.handshake_failed == 1
        assert stream.sock.fileno() == -1  # closed
