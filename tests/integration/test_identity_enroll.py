"""meshd's identity service against an enrollment server over HTTP.

First a small fake of controld's enrollment endpoints (a test CA made with ``cryptography``,
on :class:`~meshcore.runtime.asgi.AsgiServer`), with short-lived leaves so renewals happen
during the test; then a real in-process controld daemon: a join token minted through the admin
API, enrollment, renewal (leaf TTL shortened on the daemon's CA service), token reuse refused,
revocation stopping renewals.
"""

from __future__ import annotations

import base64
import logging
import stat
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from daemon_support import api_url, running_daemon
from helpers import admin_get, closed_port, start_sidecar, write_sidecar_config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshcore.runtime.asgi import AsgiServer
from meshd.control.client import ControlClient
from meshd.identity import EnrollmentRefused, Identity, IdentityClient, IdentityService
from meshd.identity.csr import build_csr
from meshd.identity.files import IdentityStore
from meshd.identity.keys import generate_key, verify

TIMEOUT = 20.0
SPIFFE = "spiffe://fake.test/ns/default/svc/web"
TOKEN = "join.abc.secret"


@dataclass
class FakeEnrollment:
    """``/v1/enroll``, ``/v1/renew`` and ``/v1/bundle`` on a test root; stoppable."""

    ttl_s: float
    port: int = 0
    tokens: set[str] = field(default_factory=lambda: {TOKEN})
    #: (unix time the request was handled, not_after of the leaf issued) per request.
    enrolled: list[tuple[float, float]] = field(default_factory=list)
    renewed: list[tuple[float, float]] = field(default_factory=list)
    _scope: trio.CancelScope | None = None
    _done: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake root")])
        now = datetime.now(UTC)
        self.root = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.root_pem = self.root.public_bytes(serialization.Encoding.PEM).decode()

    def _issue(self, csr: x509.CertificateSigningRequest) -> tuple[dict[str, object], float]:
        public_key = csr.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        now = datetime.now(UTC)
        not_after = now + timedelta(seconds=self.ttl_s)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.root.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SPIFFE)]),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        answer: dict[str, object] = {
            "certificate": leaf.public_bytes(serialization.Encoding.PEM).decode(),
            "bundle": [self.root_pem],
            "spiffe_id": SPIFFE,
            "not_after": not_after.isoformat(),
        }
        return answer, leaf.not_valid_after_utc.timestamp()

    def app(self) -> Starlette:
        async def enroll(request: Request) -> Response:
            body = await request.json()
            csr = x509.load_pem_x509_csr(body["csr"].encode())
            if not csr.is_signature_valid:
                return JSONResponse({"error": "bad CSR"}, status_code=400)
            if body["token"] not in self.tokens:
                return JSONResponse(
                    {"error": "join token unknown, used or expired"}, status_code=401
                )
            self.tokens.discard(body["token"])
            answer, not_after = self._issue(csr)
            self.enrolled.append((time.time(), not_after))
            return JSONResponse({**answer, "sidecar_token": "sidecar.web.fake"})

        async def renew(request: Request) -> Response:
            body = await request.json()
            csr = x509.load_pem_x509_csr(body["csr"].encode())
            current = x509.load_pem_x509_certificate(body["certificate"].encode())
            now = time.time()
            public_key = current.public_key()
            assert isinstance(public_key, ec.EllipticCurvePublicKey)
            signature = base64.b64decode(body["signature"])
            der = csr.public_bytes(serialization.Encoding.DER)
            refused = (
                current.not_valid_after_utc.timestamp() <= now
                or abs(now - body["time"]) > 300
                or not verify(public_key, signature, der)
            )
            current.verify_directly_issued_by(self.root)
            if refused:
                return JSONResponse({"error": "renewal refused"}, status_code=401)
            answer, not_after = self._issue(csr)
            self.renewed.append((now, not_after))
            return JSONResponse(answer)

        async def bundle(request: Request) -> Response:
            return JSONResponse({"trust_domain": "fake.test", "roots": [self.root_pem]})

        return Starlette(
            routes=[
                Route("/v1/enroll", enroll, methods=["POST"]),
                Route("/v1/renew", renew, methods=["POST"]),
                Route("/v1/bundle", bundle),
            ]
        )

    async def start(self, nursery: trio.Nursery) -> int:
        """Serve in ``nursery`` until :meth:`stop` (on the same port after a stop)."""
        self._scope = trio.CancelScope()
        self._done = trio.Event()
        port: int = await nursery.start(self._serve, self._scope)
        return port

    async def _serve(self, scope: trio.CancelScope, *, task_status: trio.TaskStatus[int]) -> None:
        try:
            with scope:
                server = AsgiServer(
                    self.app(), "127.0.0.1", self.port, error_logger=logging.getLogger("fake-ca")
                )
                async with trio.open_nursery() as nursery:
                    self.port = await nursery.start(server.run)
                    task_status.started(self.port)
        finally:
            self._done.set()

    async def stop(self) -> None:
        """Stop at once, like a controld that died."""
        assert self._scope is not None
        self._scope.cancel()
        with trio.fail_after(TIMEOUT):
            await self._done.wait()


def identity_service(tmp_path: Path, url: str, token: str) -> IdentityService:
    token_file = tmp_path / "join.token"
    token_file.write_text(token + "\n")
    return IdentityService(
        IdentityStore(tmp_path / "state"),
        IdentityClient(ControlClient(url, timeout_s=5.0)),
        service="web",
        join_token_file=token_file,
        retry_initial_s=0.1,
        retry_max_s=0.5,
    )


async def test_enroll_write_files_and_renew_in_the_window(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    fake = FakeEnrollment(ttl_s=4.0)
    port = await fake.start(nursery)
    svc = identity_service(tmp_path, f"http://127.0.0.1:{port}", TOKEN)
    async with trio.open_nursery() as inner:
        with trio.fail_after(TIMEOUT):
            first: Identity = await inner.start(svc.run)
        assert first.spiffe_id == SPIFFE and first.generation == 1
        current = IdentityStore(tmp_path / "state").current_dir
        assert stat.S_IMODE((current / "key.pem").stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
        assert (current / "cert.pem").read_bytes() == first.cert_pem
        assert not (tmp_path / "join.token").exists()
        assert svc.sidecar_token == "sidecar.web.fake"

        with trio.fail_after(TIMEOUT):
            second = await svc.wait_changed(first.generation)
        [(issued_at, not_after)] = fake.enrolled
        renewed_at = fake.renewed[0][0]
        # Not before half of the (remaining) lifetime, and before the leaf expired.
        assert renewed_at >= issued_at + 0.5 * (not_after - issued_at) - 0.05
        assert renewed_at < not_after
        assert second.cert_pem != first.cert_pem and second.key_pem != first.key_pem
        assert IdentityStore(tmp_path / "state").load() == second.with_generation(0)
        inner.cancel_scope.cancel()
    await fake.stop()


async def test_controld_down_keeps_the_cert_and_retries(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    fake = FakeEnrollment(ttl_s=10.0)
    port = await fake.start(nursery)
    svc = identity_service(tmp_path, f"http://127.0.0.1:{port}", TOKEN)
    async with trio.open_nursery() as inner:
        with trio.fail_after(TIMEOUT):
            first: Identity = await inner.start(svc.run)
        await fake.stop()
        with trio.fail_after(TIMEOUT):
            while svc.describe()["last_error"] is None:
                await trio.sleep(0.05)
        assert svc.current is not None and svc.current.generation == first.generation
        assert fake.renewed == []
        await fake.start(nursery)
        with trio.fail_after(TIMEOUT):
            second = await svc.wait_changed(first.generation)
        assert second.generation == 2 and len(fake.renewed) == 1
        inner.cancel_scope.cancel()
    await fake.stop()


async def test_sidecar_with_identity_section_enrolls_and_shows_it(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    fake = FakeEnrollment(ttl_s=3600.0)
    port = await fake.start(nursery)
    (tmp_path / "join.token").write_text(TOKEN)
    identity = {
        "state_dir": "state",
        "join_token_file": "join.token",
        "controld_url": f"http://127.0.0.1:{port}",
    }
    bootstrap = write_sidecar_config(
        tmp_path, service="web", app_port=closed_port(), listeners=[], extra={"identity": identity}
    )
    async with trio.open_nursery() as inner:
        sidecar = await start_sidecar(inner, bootstrap)
        with trio.fail_after(TIMEOUT):
            while True:
                dump = (await admin_get(sidecar, "/config_dump")).json()
                if dump["identity"]["identity"] is not None:
                    break
                await trio.sleep(0.05)
        assert dump["identity"]["identity"]["spiffe_id"] == SPIFFE
        assert "key" not in str(dump["identity"]).lower()
        assert IdentityStore(tmp_path / "state").load() is not None
        assert not (tmp_path / "join.token").exists()
        inner.cancel_scope.cancel()
    await fake.stop()


async def test_real_controld_enroll_renew_reuse_and_revoke(
    tmp_path: Path,
) -> None:
    # Short leaves, so the renewal schedule runs during the test.
    async with running_daemon(tmp_path / "data", push=False, leaf_ttl_s=4) as (_, http):
        url = api_url(http)
        resp = await http.post("/v1/tokens/join", json={"service": "web", "ttl_s": 600})
        assert resp.status_code == 200, resp.text
        token = resp.json()["token"]

        svc = identity_service(tmp_path, url, token)
        async with trio.open_nursery() as inner:
            with trio.fail_after(TIMEOUT):
                first: Identity = await inner.start(svc.run)
            trust_domain = (await http.get("/v1/bundle")).json()["trust_domain"]
            assert first.spiffe_id == f"spiffe://{trust_domain}/ns/default/svc/web"
            assert svc.sidecar_token is not None
            assert svc.sidecar_token.startswith("sidecar.web.")

            # The join token was single use.
            reuse = IdentityClient(ControlClient(url, timeout_s=5.0))
            try:
                refused = False
                try:
                    await reuse.enroll(token, build_csr(generate_key()))
                except EnrollmentRefused as exc:
                    refused = exc.status == 401
                assert refused
            finally:
                await reuse.control.aclose()

            with trio.fail_after(TIMEOUT):
                second = await svc.wait_changed(first.generation)
            assert second.spiffe_id == first.spiffe_id
            assert second.not_after > first.not_after

            # Revoked: renewals are refused, the cert stays until it expires.
            resp = await http.post("/v1/revocations", json={"spiffe_id": first.spiffe_id})
            assert resp.status_code == 200, resp.text
            with trio.fail_after(TIMEOUT):
                while svc.current is not None:
                    await trio.sleep(0.1)
            assert svc.generation == second.generation
            assert "revoked" in str(svc.describe()["last_error"])
            inner.cancel_scope.cancel()


async def test_enrolled_sidecar_polls_controld_with_the_token_it_got(tmp_path: Path) -> None:
    """One credential per host: the join token. Its enrollment answer carries the sidecar token
    the snapshot long-poll then uses (no ``snapshot.controld.token`` configured)."""
    async with running_daemon(tmp_path / "data", push=False) as (_, http):
        url = api_url(http)
        resp = await http.post("/v1/tokens/join", json={"service": "web", "ttl_s": 600})
        assert resp.status_code == 200, resp.text
        side = tmp_path / "web"
        side.mkdir()
        (side / "web.join").write_text(resp.json()["token"])
        bootstrap = {
            "service": "web",
            "app": f"127.0.0.1:{closed_port()}",
            "admin": "127.0.0.1:0",
            "inbound": "127.0.0.1:0",
            "snapshot": {"controld": {"url": url, "cache_file": "web.snapshot.json"}},
            "identity": {"state_dir": "identity", "join_token_file": "web.join"},
            "drain_timeout_s": 1,
        }
        (side / "bootstrap.yaml").write_text(yaml.safe_dump(bootstrap))
        async with trio.open_nursery() as inner:
            with trio.fail_after(TIMEOUT):
                sidecar = await start_sidecar(inner, side / "bootstrap.yaml")
            control = sidecar.control
            assert control is not None
            with trio.fail_after(TIMEOUT):
                await control.first_applied.wait()
            assert control.describe()["connected"] is True
            assert sidecar.runtime is not None
            assert sidecar.runtime.snapshot.identity is not None
            assert sidecar.runtime.snapshot.identity.service == "web"
            # The token was saved with the identity: a restart polls at once.
            saved = IdentityStore(side / "identity").load_sidecar_token()
            assert saved is not None
            assert saved.startswith("sidecar.web.")
            inner.cancel_scope.cancel()
