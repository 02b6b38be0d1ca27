"""Enrollment end to end against a real daemon: join token, enroll, renew, revoke, rotate.

The test plays the sidecar: it makes its key and CSRs locally and proves possession of the
current key on renewal, as meshd does. Every leaf is checked with cryptography's path
validation against the bundle controld serves.
"""

from __future__ import annotations

import base64
import time
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
from daemon_support import TIMEOUT, running_daemon

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


def proof(key: ec.EllipticCurvePrivateKey, csr_pem: str) -> str:
    der = x509.load_pem_x509_csr(csr_pem.encode()).public_bytes(serialization.Encoding.DER)
    return base64.b64encode(key.sign(der, ec.ECDSA(hashes.SHA256()))).decode()


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


def root_key_id(pem: str) -> bytes:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


class Sidecar:
    """One enrolled identity: its key and current certificate."""

    def __init__(self, anon: httpx.AsyncClient) -> None:
        self.anon = anon
        self.key: ec.EllipticCurvePrivateKey | None = None
        self.answer: dict[str, Any] = {}

    async def enroll(self, token: str) -> httpx.Response:
        csr, key = make_csr()
        resp = await self.anon.post("/v1/enroll", json={"token": token, "csr": csr})
        if resp.status_code == 200:
            self.key, self.answer = key, resp.json()
        return resp

    async def renew(self, *, at: float | None = None, signer: Any = None) -> httpx.Response:
        assert self.key is not None
        csr, key = make_csr()
        body = {
            "csr": csr,
            "certificate": self.answer["certificate"],
            "signature": proof(signer or self.key, csr),
            "time": time.time() if at is None else at,
        }
        resp = await self.anon.post("/v1/renew", json=body)
        if resp.status_code == 200:
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
        web = Sidecar(anon)
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

        reused = await Sidecar(anon).enroll(token)
        assert reused.status_code == 401
        assert reused.json()["error"] == INVALID

        short = await join_token(http, ttl_s=1)
        await trio.sleep(1.2)
        expired = await Sidecar(anon).enroll(short)
        assert expired.status_code == 401
        assert expired.json()["error"] == INVALID

        # Renewal with proof of possession of the current key.
        first_serial = x509.load_pem_x509_certificate(answer["certificate"].encode()).serial_number
        renewed = await web.renew()
        assert renewed.status_code == 200, renewed.text
        assert "sidecar_token" not in renewed.json()
        assert verified_id(web.answer, roots) == WEB
        serial = x509.load_pem_x509_certificate(web.answer["certificate"].encode()).serial_number
        assert serial != first_serial

        stranger = ec.generate_private_key(ec.SECP256R1())
        assert (await web.renew(signer=stranger)).status_code == 401
        assert (await web.renew(at=time.time() - 600)).status_code == 401
        assert (await web.renew(at=time.time() + 600)).status_code == 401

        # Revocation stops renewals (admin only).
        body = {"spiffe_id": WEB}
        assert (await anon.post("/v1/revocations", json=body)).status_code == 401
        assert (await http.post("/v1/revocations", json=body)).status_code == 200
        revoked = await web.renew()
        assert revoked.status_code == 401
        assert "revoked" in revoked.json()["error"]

        # The trust domain of new identities follows the Mesh resource.
        mesh = {"kind": "Mesh", "metadata": {"name": "default"}, "spec": {"trust_domain": "corp"}}
        put = await http.put("/v1/resources", json={"resources": [mesh]})
        assert put.status_code == 200, put.text
        with trio.fail_after(TIMEOUT):
            while (await bundle(anon))["trust_domain"] != "corp":
                await trio.sleep(0.05)
        api = Sidecar(anon)
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
        api = Sidecar(anon)
        assert (await api.enroll(token)).status_code == 200
        assert api.answer["spiffe_id"] == "spiffe://mesh.local/ns/prod/svc/api"


async def test_root_rotation(tmp_path: Path) -> None:
    async with (
        running_daemon(tmp_path / "data") as (_, http),
        httpx.AsyncClient(base_url=str(http.base_url), timeout=TIMEOUT) as anon,
    ):
        [old_root] = (await bundle(anon))["roots"]
        before = Sidecar(anon)
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
        during = Sidecar(anon)
        assert (await during.enroll(await join_token(http))).status_code == 200
        assert issuer_key_id(during.answer) == root_key_id(old_root)
        assert during.answer["bundle"] == roots

        activated = await rotate("activate")
        assert activated.status_code == 200, activated.text
        assert activated.json()["phase"] == "active"
        assert (await bundle(anon))["roots"] == roots
        # Old-root leaves renew; the new leaf is signed by the new root.
        assert (await before.renew()).status_code == 200
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
        # A leaf of the retired root no longer renews.
        late = await during.renew()
        assert late.status_code == 401, late.text
        assert (await before.renew()).status_code == 200
        assert (await rotate("retire")).status_code == 409

    # The rotated state survives a restart.
    async with (
        running_daemon(tmp_path / "data") as (_, http),
        httpx.AsyncClient(base_url=str(http.base_url), timeout=TIMEOUT) as anon,
    ):
        assert (await bundle(anon))["roots"] == [new_root]
