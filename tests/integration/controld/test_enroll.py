"""Enrollment end to end against a real daemon: join token, enroll, renew, revoke, rotate.

The test plays the sidecar: it makes its key and CSRs locally and renews over mutual TLS on
controld's TLS listener, presenting its current leaf, as meshd does. Every leaf is checked
with cryptography's path validation against the bundle controld serves.
"""

from __future__ import annotations

import socket
import ssl
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store
from daemon_support import TIMEOUT, running_daemon, tls_url

from meshcore.api.enroll import BundleAnswer, IssuedAnswer
from meshcore.pemfile import pem_path
from meshcore.pki import parse_join_token_pins, spki_pin
from tui.cli import main as meshctl

WEB = "spiffe://mesh.local/ns/default/svc/web"
INVALID = "join token unknown, used or expired"


def make_csr() -> tuple[str, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def tls_context(
    roots: list[str], cert_pem: str | None = None, key: ec.EllipticCurvePrivateKey | None = None
) -> ssl.SSLContext:
    """Trusts ``roots`` (host name checked: controld's certificate names 127.0.0.1) and
    presents ``cert_pem`` when given."""
    ctx = ssl.create_default_context(cadata="".join(roots))
    if cert_pem is not None and key is not None:
        with ExitStack() as files:
            cert_path = files.enter_context(pem_path(cert_pem.encode()))
            ctx.load_cert_chain(cert_path, files.enter_context(pem_path(key_pem(key))))
    return ctx


def verified_id(answer: dict[str, Any], roots: list[str]) -> str:
    """The leaf's SPIFFE ID after path validation against ``roots``."""
    leaf = x509.load_pem_x509_certificate(answer["certificate"].encode())
    store = Store([x509.load_pem_x509_certificate(r.encode()) for r in roots])
    verifier = PolicyBuilder().store(store).time(datetime.now(UTC)).build_client_verifier()
    verified = verifier.verify(leaf, [])
    assert verified.subjects is not None
    [uri] = [s.value for s in verified.subjects if isinstance(s, x509.UniformResourceIdentifier)]
    return str(uri)


def issuer_key_id(answer: dict[str, Any]) -> bytes | None:
    leaf = x509.load_pem_x509_certificate(answer["certificate"].encode())
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    return aki.value.key_identifier


def issuer_key_id_of(cert: x509.Certificate) -> bytes | None:
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    return aki.value.key_identifier


async def server_certificate(daemon: Any, roots: list[str]) -> x509.Certificate:
    """controld's TLS certificate, as a client trusting ``roots`` (host name checked) sees it;
    its SPIFFE ID is checked here."""
    port = int(tls_url(daemon).rsplit(":", 1)[1])
    ctx = tls_context(roots)

    def fetch() -> bytes:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der

    cert = x509.load_der_x509_certificate(await trio.to_thread.run_sync(fetch))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://mesh.local/controld"
    ]
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    return cert


def root_key_id(pem: str) -> bytes:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


class Sidecar:
    """One enrolled identity: its key and current certificate."""

    def __init__(self, anon: httpx.AsyncClient, tls: str) -> None:
        self.anon = anon
        self.tls = tls
        self.key: ec.EllipticCurvePrivateKey | None = None
        self.answer: dict[str, Any] = {}

    async def enroll(self, token: str) -> httpx.Response:
        csr, key = make_csr()
        resp = await self.anon.post("/v1/enroll", json={"token": token, "csr": csr})
        if resp.status_code == 200:
            IssuedAnswer.model_validate_json(resp.content)  # the shape meshd reads
            self.key, self.answer = key, resp.json()
        return resp

    async def renew(
        self, roots: list[str], *, cert: bool = True, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        """``POST /v1/renew`` over TLS, trusting ``roots``; presenting the current leaf
        unless not ``cert``. A refused handshake raises ``httpx.TransportError``."""
        assert self.key is not None
        csr, key = make_csr()
        leaf = self.answer["certificate"] if cert else None
        ctx = tls_context(roots, leaf, self.key)
        async with httpx.AsyncClient(base_url=self.tls, verify=ctx, timeout=TIMEOUT) as client:
            resp = await client.post("/v1/renew", json=body or {"csr": csr})
        if resp.status_code == 200:
            IssuedAnswer.model_validate_json(resp.content)
            self.key, self.answer = key, resp.json()
        return resp


async def join_token(http: httpx.AsyncClient, service: str = "web", ttl_s: int = 600) -> str:
    resp = await http.post("/v1/tokens/join", json={"service": service, "ttl_s": ttl_s})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["expires"].endswith("Z")
    token: str = body["token"]
    assert token.startswith("join.")
    return token


async def bundle(anon: httpx.AsyncClient) -> dict[str, Any]:
    resp = await anon.get("/v1/bundle")
    assert resp.status_code == 200, resp.text
    parsed = BundleAnswer.model_validate_json(resp.content)  # the shape meshd reads
    assert resp.headers["x-meshd-index"] == str(parsed.index)
    body: dict[str, Any] = resp.json()
    return body


async def test_enroll_renew_revoke(tmp_path: Path) -> None:
    async with (
        running_daemon(tmp_path / "data") as (daemon, http),
        httpx.AsyncClient(base_url=str(http.base_url), timeout=TIMEOUT) as anon,
    ):
        ca_dir = daemon.config.ca_dir
        assert ca_dir.is_dir() and (ca_dir.stat().st_mode & 0o777) == 0o700
        roots = (await bundle(anon))["roots"]
        assert (await bundle(anon))["trust_domain"] == "mesh.local"
        assert len(roots) == 1

        # Only the admin mints join tokens.
        refused = await anon.post("/v1/tokens/join", json={"service": "web"})
        assert refused.status_code == 401

        token = await join_token(http)
        web = Sidecar(anon, tls_url(daemon))
        # A broken CSR is a 400 and doesn't burn the token.
        bad = await anon.post("/v1/enroll", json={"token": token, "csr": "nope"})
        assert bad.status_code == 400, bad.text
        enrolled = await web.enroll(token)
        assert enrolled.status_code == 200, enrolled.text
        answer = enrolled.json()
        assert answer["spiffe_id"] == WEB
        assert answer["bundle"] == roots
        assert verified_id(answer, roots) == WEB
        # The sidecar token that comes with it works for that service.
        sidecar_http = {"Authorization": f"Bearer {answer['sidecar_token']}"}
        assert (await anon.get("/v1/schema", headers=sidecar_http)).status_code == 200

        reused = await Sidecar(anon, tls_url(daemon)).enroll(token)
        assert reused.status_code == 401
        assert reused.json()["error"] == INVALID

        short = await join_token(http, ttl_s=1)
        await trio.sleep(1.2)
        expired = await Sidecar(anon, tls_url(daemon)).enroll(short)
        assert expired.status_code == 401
        assert expired.json()["error"] == INVALID

        # The token pins the CA: the sidecar can check controld's certificate on first contact.
        root = x509.load_pem_x509_certificate(roots[0].encode())
        assert parse_join_token_pins(token) == (spki_pin(root),)

        # Renewal over mutual TLS, with the current leaf as client certificate.
        first_serial = x509.load_pem_x509_certificate(answer["certificate"].encode()).serial_number
        renewed = await web.renew(roots)
        assert renewed.status_code == 200, renewed.text
        assert renewed.json()["sidecar_token"] != answer["sidecar_token"]
        assert verified_id(web.answer, roots) == WEB
        serial = x509.load_pem_x509_certificate(web.answer["certificate"].encode()).serial_number
        assert serial != first_serial

        # No client certificate, or the plain listener: refused, saying why.
        for refused_renewal in (
            await web.renew(roots, cert=False),
            await anon.post("/v1/renew", json={"csr": make_csr()[0]}),
        ):
            assert refused_renewal.status_code == 401
            assert "renewal needs mutual TLS" in refused_renewal.json()["error"]
        # The old proof-of-possession body is gone.
        old_style = {"csr": make_csr()[0], "certificate": "x", "signature": "x", "time": 0}
        assert (await web.renew(roots, body=old_style)).status_code == 422

        # Revocation stops renewals (admin only).
        body = {"spiffe_id": WEB}
        assert (await anon.post("/v1/revocations", json=body)).status_code == 401
        assert (await http.post("/v1/revocations", json=body)).status_code == 200
        revoked = await web.renew(roots)
        assert revoked.status_code == 401
        assert "revoked" in revoked.json()["error"]
        assert len((await bundle(anon))["revoked"]) == 2  # the enrolled and the renewed leaf

        # The trust domain of new identities follows the Mesh resource.
        mesh = {"kind": "Mesh", "metadata": {"name": "default"}, "spec": {"trust_domain": "corp"}}
        put = await http.put("/v1/resources", json={"resources": [mesh]})
        assert put.status_code == 200, put.text
        with trio.fail_after(TIMEOUT):
            while (await bundle(anon))["trust_domain"] != "corp":
                await trio.sleep(0.05)
        api = Sidecar(anon, tls_url(daemon))
        assert (await api.enroll(await join_token(http, "api"))).status_code == 200
        assert verified_id(api.answer, roots) == "spiffe://corp/ns/default/svc/api"


async def test_meshctl_token_create(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with (
        running_daemon(tmp_path / "data") as (daemon, http),
        httpx.AsyncClient(base_url=str(http.base_url), timeout=TIMEOUT) as anon,
    ):
        argv = ["--server", str(http.base_url), "--token-file", str(daemon.config.token_path)]
        argv += ["token", "create", "--service", "api", "--namespace", "prod", "--ttl", "5m"]
        # meshctl's client is synchronous: run it off the loop that serves the daemon.
        code = await trio.to_thread.run_sync(meshctl, argv)
        assert code == 0
        # The daemon's structlog events share this stdout; meshctl's output is the last line.
        token = capsys.readouterr().out.strip().splitlines()[-1]
        assert token.startswith("join.")
        api = Sidecar(anon, tls_url(daemon))
        assert (await api.enroll(token)).status_code == 200
        assert api.answer["spiffe_id"] == "spiffe://mesh.local/ns/prod/svc/api"


async def test_root_rotation(tmp_path: Path) -> None:
    async with (
        running_daemon(tmp_path / "data") as (daemon, http),
        httpx.AsyncClient(base_url=str(http.base_url), timeout=TIMEOUT) as anon,
    ):
        [old_root] = (await bundle(anon))["roots"]
        assert issuer_key_id_of(await server_certificate(daemon, [old_root])) == root_key_id(
            old_root
        )
        before = Sidecar(anon, tls_url(daemon))
        assert (await before.enroll(await join_token(http))).status_code == 200

        async def rotate(step: str) -> httpx.Response:
            return await http.post("/v1/ca/rotate", json={"step": step})

        assert (await anon.post("/v1/ca/rotate", json={"step": "stage"})).status_code == 401
        assert (await rotate("activate")).status_code == 409
        staged = await rotate("stage")
        assert staged.status_code == 200, staged.text
        assert staged.json()["phase"] == "staged"
        roots = (await bundle(anon))["roots"]
        assert len(roots) == 2 and roots[0] == old_root
        new_root = roots[1]
        # Still signed by the old root, but the answer carries both roots.
        during = Sidecar(anon, tls_url(daemon))
        assert (await during.enroll(await join_token(http))).status_code == 200
        assert issuer_key_id(during.answer) == root_key_id(old_root)
        assert during.answer["bundle"] == roots

        activated = await rotate("activate")
        assert activated.status_code == 200, activated.text
        assert activated.json()["phase"] == "active"
        assert (await bundle(anon))["roots"] == roots
        # controld's own certificate follows the signer (for new connections).
        with trio.fail_after(TIMEOUT):
            while issuer_key_id_of(await server_certificate(daemon, roots)) != root_key_id(
                new_root
            ):
                await trio.sleep(0.05)
        # Old-root leaves renew; the new leaf is signed by the new root.
        assert (await before.renew(roots)).status_code == 200
        assert issuer_key_id(before.answer) == root_key_id(new_root)
        assert verified_id(before.answer, roots) == WEB

        # ``during``'s old-root leaf is outstanding (and leaves from before the start may be):
        # retire is refused unless forced.
        assert (await rotate("retire")).status_code == 409
        retired = await http.post("/v1/ca/rotate", json={"step": "retire", "force": True})
        assert retired.status_code == 200, retired.text
        assert retired.json()["phase"] == "stable"
        assert (await bundle(anon))["roots"] == [new_root]
        assert verified_id(before.answer, [new_root]) == WEB
        # A leaf of the retired root no longer renews: its handshake fails.
        with pytest.raises(httpx.TransportError):
            await during.renew([new_root])
        assert (await before.renew([new_root])).status_code == 200
        assert (await rotate("retire")).status_code == 409

    # The rotated state survives a restart.
    async with (
        running_daemon(tmp_path / "data") as (_, http),
        httpx.AsyncClient(base_url=str(http.base_url), timeout=TIMEOUT) as anon,
    ):
        assert (await bundle(anon))["roots"] == [new_root]
