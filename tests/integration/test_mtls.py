"""mTLS on the data path: two in-process sidecars with certificates from a test CA.

Client -> outbound sidecar ``web`` (originates mTLS, checks the server is ``api``) ->
inbound sidecar ``api`` (STRICT or PERMISSIVE, takes the client's SPIFFE ID) -> app. The
certificate material comes from files (bootstrap ``identity.static``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from helpers import (
    TIMEOUT,
    RawClient,
    RawServer,
    TestApp,
    admin_get,
    app_headers,
    closed_port,
    cluster,
    echo_until_eof,
    parse_head,
    port_of,
    request,
    start_sidecar,
    write_sidecar_config,
)
from mtls_ca import TRUST_DOMAIN, Leaf, MiniCA, make_ca, spiffe

from meshd.net.tls import TlsStream, tls_connect
from meshd.net.tlsconfig import client_context
from meshd.sidecar import Sidecar

IDENTITY = {
    "state_dir": "state",
    "static": {"cert_file": "cert.pem", "key_file": "key.pem", "bundle_file": "bundle.pem"},
}


def write_identity(directory: Path, ca: MiniCA, leaf: Leaf) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_bytes(leaf.cert_pem)
    (directory / "key.pem").write_bytes(leaf.key_pem)
    (directory / "bundle.pem").write_bytes(ca.root_pem)


def set_snapshot(directory: Path, **fields: Any) -> None:
    path = directory / "snapshot.yaml"
    doc = yaml.safe_load(path.read_text())
    doc.update(fields)
    path.write_text(yaml.safe_dump(doc))


async def start_api(
    nursery: trio.Nursery,
    directory: Path,
    ca: MiniCA,
    app_port: int,
    mode: str,
    protocol: str = "http",
) -> Sidecar:
    """Sidecar ``api``: an inbound listener in ``mode`` in front of the app."""
    path = write_sidecar_config(
        directory,
        service="api",
        app_port=app_port,
        listeners=[
            {
                "name": "inbound",
                "direction": "inbound",
                "address": "127.0.0.1:0",
                "protocol": protocol,
            }
        ],
        extra={"identity": IDENTITY, "access_log": {"enabled": True, "sample_rate": 1.0}},
    )
    write_identity(directory, ca, ca.service("api"))
    set_snapshot(directory, mtls=mode, identity={"service": "api", "trust_domain": TRUST_DOMAIN})
    return await start_sidecar(nursery, path)


async def start_web(
    nursery: trio.Nursery,
    directory: Path,
    ca: MiniCA,
    api_port: int,
    expect: str = "api",
    protocol: str = "http",
) -> Sidecar:
    """Sidecar ``web``: an outbound listener to cluster ``api`` (mTLS, expecting ``expect``)."""
    path = write_sidecar_config(
        directory,
        service="web",
        app_port=closed_port(),
        listeners=[
            {
                "name": "out",
                "direction": "outbound",
                "address": "127.0.0.1:0",
                "cluster": "api",
                "protocol": protocol,
            }
        ],
        clusters=[cluster("api", api_port, tls={"spiffe_id": spiffe(expect)})],
        extra={"identity": IDENTITY},
    )
    write_identity(directory, ca, ca.service("web"))
    set_snapshot(
        directory, mtls="strict", identity={"service": "web", "trust_domain": TRUST_DOMAIN}
    )
    return await start_sidecar(nursery, path)


@asynccontextmanager
async def mtls_client(port: int, ca: MiniCA, leaf: Leaf) -> AsyncIterator[TlsStream]:
    ctx = client_context(leaf.cert_pem, leaf.key_pem, ca.root_pem)
    with trio.fail_after(TIMEOUT):
        stream = await tls_connect("127.0.0.1", port, ctx)
    try:
        yield stream
    finally:
        await stream.aclose()


async def exchange(stream: TlsStream, data: bytes) -> bytes:
    """Send ``data``; everything until the end of a response head (b"" if closed or reset)."""
    buf = b""
    with trio.fail_after(TIMEOUT):
        try:
            await stream.send_all(data)
            while b"\r\n\r\n" not in buf:
                piece = await stream.receive_some()
                if not piece:
                    return b""
                buf += piece
            head, _, body = buf.partition(b"\r\n\r\n")
            length = parse_head(head + b"\r\n\r\n").header("content-length")
            want = int(length) if length else 0
            while len(body) < want:
                piece = await stream.receive_some()
                if not piece:
                    break
                body += piece
            return head + b"\r\n\r\n" + body
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""


async def test_strict_chain_passes_peer_identity(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    ca = make_ca()
    api = await start_api(nursery, tmp_path / "api", ca, app.port, "strict")
    web = await start_web(nursery, tmp_path / "web", ca, port_of(api, "inbound"))
    async with RawClient.connect(port_of(web, "out")) as client:
        for _ in range(3):  # the pooled TLS connection is reused
            await client.send(
                request("GET", "/echo", headers=[("X-Meshd-Peer-Identity", "spiffe://evil")])
            )
            resp = await client.read_response()
            assert resp.status == 200
            seen = app_headers(resp.json())
            assert seen["x-meshd-peer-identity"] == [spiffe("web")]
    [endpoint] = next(c for c in web.clusters_info() if c["name"] == "api")["endpoints"]
    assert endpoint["created"] == 1
    stats = (await admin_get(api, "/stats")).json()
    assert stats["mtls"]["mode"] == "strict"


async def test_strict_refuses_plaintext(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    ca = make_ca()
    api = await start_api(nursery, tmp_path / "api", ca, app.port, "strict")
    async with RawClient.connect(port_of(api, "inbound")) as client:
        await client.send(request("GET", "/echo"))
        _, how = await client.read_until_closed()
    assert how in ("eof", "reset")
    assert app.requests == 0
    assert api.tls.plaintext_refused == 1


async def test_wrong_server_identity_is_502(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    ca = make_ca()
    api = await start_api(nursery, tmp_path / "api", ca, app.port, "strict")
    web = await start_web(nursery, tmp_path / "web", ca, port_of(api, "inbound"), expect="db")
    async with RawClient.connect(port_of(web, "out")) as client:
        await client.send(request("GET", "/echo"))
        resp = await client.read_response()
    assert resp.status == 502
    assert resp.header("x-meshd-error") == "upstream_identity_mismatch"
    assert app.requests == 0


async def test_untrusted_or_expired_client_refused(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    ca = make_ca()
    api = await start_api(nursery, tmp_path / "api", ca, app.port, "strict")
    port = port_of(api, "inbound")
    foreign = make_ca("foreign root")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    expired = ca.service("web", not_before=past, not_after=past + dt.timedelta(hours=1))
    for leaf in (foreign.service("web"), expired):
        try:
            async with mtls_client(port, ca, leaf) as stream:
                answer = await exchange(stream, request("GET", "/echo"))
        except OSError:
            answer = b""
        assert answer == b""
    assert app.requests == 0
    assert api.tls.handshake_failed == 2
    # A good certificate gets through, and its identity reaches the app.
    async with mtls_client(port, ca, ca.service("web")) as stream:
        answer = await exchange(stream, request("GET", "/echo"))
    assert answer.startswith(b"HTTP/1.1 200")
    assert spiffe("web") in answer.decode()


async def test_permissive_accepts_plaintext_and_mtls(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    ca = make_ca()
    api = await start_api(nursery, tmp_path / "api", ca, app.port, "permissive")
    port = port_of(api, "inbound")
    async with RawClient.connect(port) as client:
        await client.send(
            request("GET", "/echo", headers=[("X-Meshd-Peer-Identity", "spiffe://evil")])
        )
        resp = await client.read_response()
    assert resp.status == 200
    assert "x-meshd-peer-identity" not in app_headers(resp.json())
    async with mtls_client(port, ca, ca.service("web")) as stream:
        answer = await exchange(stream, request("GET", "/echo"))
    assert answer.startswith(b"HTTP/1.1 200")
    echo = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert app_headers(echo)["x-meshd-peer-identity"] == [spiffe("web")]


async def test_new_certificate_applies_to_new_connections(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    ca = make_ca()
    api = await start_api(nursery, tmp_path / "api", ca, app.port, "strict")
    port = port_of(api, "inbound")
    async with mtls_client(port, ca, ca.service("web")) as old:
        assert (await exchange(old, request("GET", "/echo"))).startswith(b"HTTP/1.1 200")
        rotated = ca.service("api")
        write_identity(tmp_path / "api", ca, rotated)
        assert api.reload()
        with trio.fail_after(TIMEOUT):
            while api.tls.identity is None or api.tls.identity.cert_pem != rotated.cert_pem:
                await trio.sleep(0.01)
        # The open connection goes on with its old certificate...
        assert (await exchange(old, request("GET", "/echo"))).startswith(b"HTTP/1.1 200")
        # ...a new one gets the new certificate.
        async with mtls_client(port, ca, ca.service("web")) as new:
            assert new.peer_certificate_der() == rotated.cert_der
            assert (await exchange(new, request("GET", "/echo"))).startswith(b"HTTP/1.1 200")


async def test_tcp_over_mtls_with_half_close_and_resumption(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    echo = RawServer(echo_until_eof)
    await nursery.start(echo.run)
    ca = make_ca()
    api = await start_api(nursery, tmp_path / "api", ca, echo.port, "strict", protocol="tcp")
    web = await start_web(nursery, tmp_path / "web", ca, port_of(api, "inbound"), protocol="tcp")
    payload = b"x" * 200_000
    for _ in range(3):
        with trio.fail_after(TIMEOUT):
            stream = await trio.open_tcp_stream("127.0.0.1", port_of(web, "out"))
            async with stream:
                await stream.send_all(payload)
                await stream.send_eof()
                got = b""
                while data := await stream.receive_some(65536):
                    got += data
        assert got == payload
    # Plaintext straight to the STRICT listener gets nothing back.
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(api, "inbound"))
        async with stream:
            await stream.send_all(b"hello")
            with suppress(trio.BrokenResourceError):
                assert await stream.receive_some(10) == b""
    assert echo.connections == 3
    [pool] = [p for p in web.pools if p.tls_id is not None]
    assert pool.created == 3
    assert pool.resumed >= 1


async def test_access_log_has_source_identity(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = make_ca()
    api = await start_api(nursery, tmp_path / "api", ca, app.port, "strict")
    async with mtls_client(port_of(api, "inbound"), ca, ca.service("web")) as stream:
        answer = await exchange(stream, request("GET", "/echo"))
    assert answer.startswith(b"HTTP/1.1 200")
    out = capsys.readouterr().out
    # structlog's default console renderer (JSON when meshd configured it).
    expected = (f"source_identity={spiffe('web')}", f'"source_identity": "{spiffe("web")}"')
    assert any(text in out for text in expected)
    # The calling service, taken from the identity, is the access log's and metrics' source.
    assert any(text in out for text in ("source=web", '"source": "web"'))
    metrics = (await admin_get(api, "/metrics")).text
    assert 'direction="inbound"' in metrics
    assert any('source="web"' in line for line in metrics.splitlines() if "inbound" in line)
