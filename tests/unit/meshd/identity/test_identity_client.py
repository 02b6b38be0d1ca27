"""IdentityClient's requests and how it reads answers, against a canned HTTP server."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
from cryptography import x509
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshcore.runtime.asgi import AsgiServer
from meshd.control.client import ControlClient, ControlProtocolError, ControlUnavailable
from meshd.identity.client import IdentityClient
from meshd.identity.csr import build_csr
from meshd.identity.errors import EnrollmentRefused
from meshd.identity.keys import generate_key

GOOD: dict[str, Any] = {
    "certificate": "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
    "bundle": ["root"],
    "spiffe_id": "spiffe://t/ns/default/svc/web",
    "not_after": "2026-01-01T00:00:00Z",
}


class Canned:
    """Answers each request with ``(status, body)``; records the JSON bodies."""

    def __init__(self) -> None:
        self.answer: tuple[int, Any] = (200, GOOD)
        self.seen: list[tuple[str, Any]] = []

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            body = await request.json() if request.method == "POST" else None
            self.seen.append((request.url.path, body))
            status, doc = self.answer
            if isinstance(doc, bytes):
                return Response(doc, status_code=status)
            return JSONResponse(doc, status_code=status)

        paths = ("/v1/enroll", "/v1/renew", "/v1/bundle")
        return Starlette(routes=[Route(p, handle, methods=["GET", "POST"]) for p in paths])


@pytest.fixture
async def canned(nursery: trio.Nursery) -> tuple[Canned, IdentityClient]:
    server = Canned()
    asgi = AsgiServer(server.app(), "127.0.0.1", 0, error_logger=logging.getLogger("canned"))
    port = await nursery.start(asgi.run)
    return server, IdentityClient(ControlClient(f"http://127.0.0.1:{port}", timeout_s=5))


async def test_enroll_sends_token_and_csr(canned: tuple[Canned, IdentityClient]) -> None:
    server, client = canned
    server.answer = (200, {**GOOD, "sidecar_token": "sidecar.web.x"})
    key = generate_key()
    issued = await client.enroll("join.1.s", build_csr(key))
    [(path, body)] = server.seen
    assert path == "/v1/enroll" and body["token"] == "join.1.s"
    assert x509.load_pem_x509_csr(body["csr"].encode()).is_signature_valid
    assert issued.cert_pem == GOOD["certificate"].encode()
    assert issued.bundle_pems == (b"root",)
    assert issued.sidecar_token == "sidecar.web.x"
    await client.control.aclose()


async def test_renew_sends_only_the_csr(canned: tuple[Canned, IdentityClient]) -> None:
    # The credential is the connection's client certificate (mutual TLS), not the body.
    server, client = canned
    csr = build_csr(generate_key())
    issued = await client.renew(csr)
    [(path, body)] = server.seen
    assert path == "/v1/renew"
    assert set(body) == {"csr"}
    assert x509.load_pem_x509_csr(body["csr"].encode()).is_signature_valid
    assert issued.sidecar_token is None
    await client.control.aclose()


@pytest.mark.parametrize(
    ("status", "doc", "error"),
    [
        (401, {"error": "join token unknown, used or expired"}, EnrollmentRefused),
        (400, {"error": "bad CSR"}, EnrollmentRefused),
        (429, {"error": "slow down"}, ControlUnavailable),
        (503, b"down", ControlUnavailable),
        (200, b"not json", ControlProtocolError),
        (200, {**GOOD, "bundle": "root"}, ControlProtocolError),
        (200, {k: v for k, v in GOOD.items() if k != "certificate"}, ControlProtocolError),
    ],
)
async def test_answers_map_to_typed_errors(
    canned: tuple[Canned, IdentityClient], status: int, doc: Any, error: type[Exception]
) -> None:
    server, client = canned
    server.answer = (status, doc)
    with pytest.raises(error) as info:
        await client.enroll("join.1.s", build_csr(generate_key()))
    if isinstance(info.value, EnrollmentRefused):
        assert info.value.status == status
        assert doc["error"] in str(info.value)
    await client.control.aclose()


async def test_bundle(canned: tuple[Canned, IdentityClient]) -> None:
    server, client = canned
    server.answer = (200, {"trust_domain": "mesh.test", "roots": ["r1", "r2"]})
    assert await client.bundle() == ("mesh.test", (b"r1", b"r2"))
    server.answer = (200, {"trust_domain": "mesh.test", "roots": "r1"})
    with pytest.raises(ControlProtocolError):
        await client.bundle()
    await client.control.aclose()


async def test_bundle_revoked_serials(canned: tuple[Canned, IdentityClient]) -> None:
    server, client = canned
    base = {"trust_domain": "mesh.test", "roots": ["r1"], "index": 7}
    server.answer = (200, base)  # an older controld: nothing revoked
    assert (await client.watch_bundle(None)).revoked == frozenset()
    revoked = [{"serial": "1f", "not_after": "2026-01-01T00:00:00Z", "identity": "x"}]
    server.answer = (200, {**base, "revoked": [*revoked, {"serial": "A0"}]})
    assert (await client.watch_bundle(None)).revoked == frozenset({0x1F, 0xA0})
    for bad in ("1f", [{"serial": 31}], [{"serial": "zz"}], [{"serial": "f" * 41}], [3]):
        server.answer = (200, {**base, "revoked": bad})
        with pytest.raises(ControlProtocolError):
            await client.watch_bundle(None)
    await client.control.aclose()


async def test_enroll_sends_the_instance_when_it_is_one(
    canned: tuple[Canned, IdentityClient],
) -> None:
    server, client = canned
    await client.enroll("join.1.s", build_csr(generate_key()), instance="web-1")
    await client.enroll("join.1.s", build_csr(generate_key()), instance="bad name")
    assert [body.get("instance") for _, body in server.seen] == ["web-1", None]
    await client.control.aclose()
