"""controld's TLS listener: its certificate from the CA, client certificates in the ASGI scope,
refused foreign certificates, the handshake timeout, and a new certificate after a rotation."""

from __future__ import annotations

import json
import ssl
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controld.ca import servertls
from controld.ca.rotation import CertificateAuthority
from controld.ca.servertls import ServerTls, server_sans
from controld.registry import serverlimits
from controld.registry.httpserver import HTTPServer
from meshcore.pemfile import pem_path

WEB = "spiffe://mesh.local/ns/default/svc/web"


async def scope_app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Any]],
    send: Callable[[Any], Awaitable[None]],
) -> None:
    await receive()
    tls = scope.get("extensions", {}).get("tls", {})
    body = json.dumps({"scheme": scope["scheme"], "chain": tls.get("client_cert_chain")})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body.encode()})


def client_context(
    ca: CertificateAuthority, leaf: x509.Certificate | None = None, key: Any = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata="".join(ca.bundle_pem()))
    if leaf is not None:
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with ExitStack() as files:
            cert_path = files.enter_context(pem_path(leaf.public_bytes(serialization.Encoding.PEM)))
            ctx.load_cert_chain(cert_path, files.enter_context(pem_path(key_pem)))
    return ctx


async def connect(port: int, ctx: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    raw = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(raw, ctx, server_hostname="127.0.0.1")
    await stream.do_handshake()
    return stream


async def get(stream: trio.SSLStream[trio.SocketStream]) -> dict[str, Any]:
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    got = b""
    with trio.fail_after(5):
        while b"}" not in got:
            chunk = await stream.receive_some()
            if not chunk:
                raise trio.BrokenResourceError("closed")
            got += chunk
    doc: dict[str, Any] = json.loads(got.partition(b"\r\n\r\n")[2])
    return doc


async def connect_and_get(port: int, ctx: ssl.SSLContext) -> dict[str, Any]:
    raw = await trio.open_tcp_stream("127.0.0.1", port)
    async with trio.SSLStream(raw, ctx, server_hostname="127.0.0.1") as stream:
        return await get(stream)


def issued_by(stream: trio.SSLStream[trio.SocketStream], root: x509.Certificate) -> bool:
    der = stream.getpeercert(binary_form=True)
    assert der is not None
    try:
        x509.load_der_x509_certificate(der).verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca")


async def serve(nursery: trio.Nursery, ca: CertificateAuthority) -> tuple[ServerTls, int]:
    dns, ips = server_sans("127.0.0.1", ("controld.example",))
    server_tls = ServerTls(
        ca,
        lambda: "mesh.local",
        leaf_ttl=lambda: timedelta(hours=1),
        dns_names=dns,
        ips=ips,
    )
    await nursery.start(server_tls.run)
    server = HTTPServer(scope_app, "127.0.0.1", 0, tls=server_tls.context)
    port: int = await nursery.start(server.run)
    return server_tls, port


async def test_client_certificate_reaches_the_scope(
    nursery: trio.Nursery, ca: CertificateAuthority
) -> None:
    _, port = await serve(nursery, ca)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = ca.sign(key.public_key(), WEB)
    stream = await connect(port, client_context(ca, leaf, key))
    answer = await get(stream)
    assert answer["scheme"] == "https"
    [pem] = answer["chain"]
    assert x509.load_pem_x509_certificate(pem.encode()) == leaf
    await stream.aclose()

    anonymous = await connect(port, client_context(ca))
    assert (await get(anonymous))["chain"] == []
    await anonymous.aclose()


async def test_a_foreign_client_certificate_is_refused(
    nursery: trio.Nursery, ca: CertificateAuthority, tmp_path: Path
) -> None:
    _, port = await serve(nursery, ca)
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    key = ec.generate_private_key(ec.SECP256R1())
    stranger = other.sign(key.public_key(), WEB)
    ctx = client_context(ca, stranger, key)
    # TLS 1.3: the client's handshake ends before the server checks; the refusal shows next.
    with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
        await connect_and_get(port, ctx)


async def test_an_expired_client_certificate_is_refused(
    nursery: trio.Nursery, ca: CertificateAuthority
) -> None:
    _, port = await serve(nursery, ca)
    key = ec.generate_private_key(ec.SECP256R1())
    past = datetime.now(UTC) - timedelta(hours=2)
    expired = ca.sign(key.public_key(), WEB, ttl=timedelta(hours=1), now=past)
    with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
        await connect_and_get(port, client_context(ca, expired, key))


async def test_a_silent_client_is_dropped_after_the_handshake_timeout(
    nursery: trio.Nursery, ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serverlimits, "HANDSHAKE_TIMEOUT_S", 0.2)
    _, port = await serve(nursery, ca)
    raw = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(5):
        assert await raw.receive_some() == b""
    await raw.aclose()


async def test_new_connections_get_the_new_signer_after_activate(
    nursery: trio.Nursery, ca: CertificateAuthority
) -> None:
    server_tls, port = await serve(nursery, ca)
    old_root = ca.signer.cert
    before = await connect(port, client_context(ca))
    assert issued_by(before, old_root)
    ca.stage_new_root()
    ca.activate()
    with trio.fail_after(5):
        while server_tls.current.bundle_index != ca.index:
            await trio.sleep(0.01)
    after = await connect(port, client_context(ca))
    assert issued_by(after, ca.signer.cert) and not issued_by(after, old_root)
    # The open connection keeps working on its certificate.
    assert (await get(before))["chain"] == []
    san = server_tls.current.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "controld.example" in san.value.get_values_for_type(x509.DNSName)
    for stream in (before, after):
        await stream.aclose()


def test_the_leaf_is_loaded_with_the_root_that_signed_it(
    ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a leaf alone, OpenSSL would build the chain it sends (the same two certificates)
    # from the verify store on every handshake, verifying our own leaf's signature each time.
    loaded: list[bytes] = []

    @contextmanager
    def recorded(data: bytes) -> Iterator[str]:
        loaded.append(data)
        with pem_path(data) as path:
            yield path

    monkeypatch.setattr(servertls, "pem_path", recorded)
    pem = serialization.Encoding.PEM
    ca.stage_new_root()
    ca.activate()  # the bundle is (old, new) and the new root signs
    current = ServerTls(ca, lambda: "mesh.local", leaf_ttl=lambda: timedelta(hours=1)).current
    chains = [data for data in loaded if b"CERTIFICATE" in data]
    assert chains == [current.cert.public_bytes(pem) + ca.signer.cert.public_bytes(pem)]
