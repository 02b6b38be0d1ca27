"""meshd's identity service against a real in-process controld, over its TLS listener.

Join tokens are minted through the admin API. The sidecar verifies controld's certificate on
first contact with the CA pins the token carries (or an ``identity.ca_file``), enrolls, and
renews over mutual TLS (leaf TTL shortened on the daemon's CA service, so renewals happen
during the test). Also: token reuse refused, revocation stopping renewals, a wrong pin, a
foreign ``ca_file``, a token without pins, and a server that isn't controld.
"""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import httpx
import pytest
import trio
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from daemon_support import running_daemon, tls_url
from helpers import admin_get, closed_port, start_sidecar

from controld.ca.authority import generate_root
from meshcore.pki import JOIN_TOKEN_PATTERN, spki_pin
from meshd.control.client import ControlClient, ControlUnavailable
from meshd.identity import EnrollmentRefused, Identity, IdentityClient, IdentityService
from meshd.identity.csr import build_csr
from meshd.identity.errors import IdentityError
from meshd.identity.files import IdentityStore
from meshd.identity.keys import generate_key
from meshd.identity.trust import FIELD, ControldTrust
from meshd.net.tls import tls_accept
from meshd.net.tlsconfig import anonymous_client_context, server_context

TIMEOUT = 20.0


def identity_service(
    tmp_path: Path, url: str, token: str | None, *, ca_file: Path | None = None
) -> IdentityService:
    """An identity service as ``from_bootstrap`` builds it (https, trust from pins/ca_file)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    token_file = tmp_path / "join.token"
    if token is not None:
        token_file.write_text(token + "\n")
    trust = ControldTrust()
    control = ControlClient(
        url, timeout_s=5.0, tls=trust.context, peer_id=trust.peer_id, field=FIELD
    )
    return IdentityService(
        IdentityStore(tmp_path / "state"),
        IdentityClient(control),
        service="web",
        join_token_file=token_file,
        retry_initial_s=0.1,
        retry_max_s=0.5,
        trust=trust,
        ca_file=ca_file,
    )


async def join_token(http: httpx.AsyncClient, service: str = "web") -> str:
    resp = await http.post("/v1/tokens/join", json={"service": service, "ttl_s": 600})
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["token"]
    return token


def without_pins(token: str) -> str:
    match = JOIN_TOKEN_PATTERN.match(token)
    assert match is not None and match.group(3)
    return f"join.{match.group(1)}.{match.group(2)}"


async def wait_error(svc: IdentityService, text: str) -> str:
    with trio.fail_after(TIMEOUT):
        while text not in str(svc.describe()["last_error"]):
            await trio.sleep(0.05)
    return str(svc.describe()["last_error"])


async def test_enroll_with_pins_then_renew_over_mtls_reuse_revoke_restart(
    tmp_path: Path,
) -> None:
    # Short leaves, so the renewal schedule runs during the test.
    async with running_daemon(tmp_path / "data", push=False, leaf_ttl_s=4) as (daemon, http):
        token = await join_token(http)
        url = tls_url(daemon)
        svc = identity_service(tmp_path, url, token)
        async with trio.open_nursery() as inner:
            with trio.fail_after(TIMEOUT):
                first: Identity = await inner.start(svc.run)
            trust_domain = (await http.get("/v1/bundle")).json()["trust_domain"]
            assert first.spiffe_id == f"spiffe://{trust_domain}/ns/default/svc/web"
            assert svc.sidecar_token is not None
            assert svc.sidecar_token.startswith("sidecar.")
            current = IdentityStore(tmp_path / "state").current_dir
            assert stat.S_IMODE((current / "key.pem").stat().st_mode) == 0o600
            assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
            assert not (tmp_path / "join.token").exists()

            # The join token was single use.
            reuse = identity_service(tmp_path / "again", url, None)
            reuse.trust.anchors = first.bundle_pems  # type: ignore[union-attr]
            with pytest.raises(EnrollmentRefused) as refused:
                await reuse.client.enroll(token, build_csr(generate_key()))
            assert refused.value.status == 401
            reuse.client.control.close()

            # Two renewals over mutual TLS, each a new key and a later expiry.
            generation, last = first.generation, first
            for _ in range(2):
                with trio.fail_after(TIMEOUT):
                    renewed = await svc.wait_changed(generation)
                assert renewed.spiffe_id == first.spiffe_id
                assert renewed.not_after > last.not_after
                assert renewed.key_pem != last.key_pem
                generation, last = renewed.generation, renewed
            inner.cancel_scope.cancel()

        # A restart loads the saved identity (no token left) and renews it.
        again = identity_service(tmp_path, url, None)
        async with trio.open_nursery() as inner:
            with trio.fail_after(TIMEOUT):
                loaded: Identity = await inner.start(again.run)
            assert loaded.cert_pem == last.cert_pem
            with trio.fail_after(TIMEOUT):
                after_restart = await again.wait_changed(loaded.generation)
            assert after_restart.cert_pem != loaded.cert_pem
            assert after_restart.not_after >= loaded.not_after

            # Revoked: renewals are refused, the cert stays until it expires.
            resp = await http.post("/v1/revocations", json={"spiffe_id": first.spiffe_id})
            assert resp.status_code == 200, resp.text
            await wait_error(again, "revoked")
            with trio.fail_after(TIMEOUT):
                while again.current is not None:
                    await trio.sleep(0.1)
            inner.cancel_scope.cancel()


async def test_a_pin_of_another_ca_is_refused_before_the_token_is_sent(tmp_path: Path) -> None:
    async with running_daemon(tmp_path / "data", push=False) as (daemon, http):
        token = await join_token(http)
        stranger = spki_pin(generate_root().cert)
        svc = identity_service(tmp_path, tls_url(daemon), f"{without_pins(token)}.{stranger}")
        async with trio.open_nursery() as inner:
            inner.start_soon(svc.run)
            error = await wait_error(svc, "does not match the join token's pin")
            assert svc.current is None
            # Never sent: the token file is there, and the token still enrolls.
            assert (tmp_path / "join.token").exists()
            inner.cancel_scope.cancel()
        fresh = identity_service(tmp_path / "fresh", tls_url(daemon), token)
        async with trio.open_nursery() as inner:
            with trio.fail_after(TIMEOUT):
                await inner.start(fresh.run)
            inner.cancel_scope.cancel()
    assert tls_url(daemon) in error


async def test_ca_file_instead_of_pins(tmp_path: Path) -> None:
    async with running_daemon(tmp_path / "data", push=False) as (daemon, http):
        [root] = (await http.get("/v1/bundle")).json()["roots"]
        right, foreign = tmp_path / "ca.pem", tmp_path / "foreign.pem"
        right.write_text(root)
        foreign.write_text(generate_root().cert_pem())
        token = without_pins(await join_token(http))

        # A root that isn't controld's: the handshake fails, the token stays unspent.
        bad = identity_service(tmp_path / "bad", tls_url(daemon), token, ca_file=foreign)
        async with trio.open_nursery() as inner:
            inner.start_soon(bad.run)
            await wait_error(bad, "certificate verify failed")
            assert (tmp_path / "bad" / "join.token").exists()
            inner.cancel_scope.cancel()

        good = identity_service(tmp_path / "good", tls_url(daemon), token, ca_file=right)
        async with trio.open_nursery() as inner:
            with trio.fail_after(TIMEOUT):
                identity: Identity = await inner.start(good.run)
            assert identity.spiffe_id.endswith("/svc/web")
            inner.cancel_scope.cancel()

        # Neither pins nor ca_file: nothing to verify controld with.
        blind = identity_service(
            tmp_path / "blind", tls_url(daemon), without_pins(await join_token(http))
        )
        with pytest.raises(IdentityError, match="carries no CA pin"):
            await blind.run()


async def test_a_server_that_is_not_controld_is_refused(tmp_path: Path) -> None:
    """A certificate from the mesh's own CA, but a workload's: not controld's identity."""
    async with running_daemon(tmp_path / "data", push=False) as (daemon, _):
        assert daemon.identity is not None
        ca = daemon.identity.ca
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = ca.sign(key.public_key(), "spiffe://mesh.local/ns/default/svc/web")
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        cert_pem = leaf.public_bytes(serialization.Encoding.PEM)
        root_pem = ca.signer.cert_pem().encode()
        ctx = server_context(cert_pem, key_pem, root_pem, require_client_cert=False)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]

        async def serve_one() -> None:
            await trio.lowlevel.wait_readable(listener)
            sock, _ = listener.accept()
            stream = await tls_accept(sock, ctx)
            await trio.sleep(TIMEOUT)
            await stream.aclose()

        client = ControlClient(
            f"https://127.0.0.1:{port}",
            tls=lambda: anonymous_client_context(root_pem),
            peer_id=lambda: "spiffe://mesh.local/controld",
            field=FIELD,
        )
        try:
            async with trio.open_nursery() as inner:
                inner.start_soon(serve_one)
                with pytest.raises(ControlUnavailable, match="is not controld"):
                    await client.get("/v1/bundle")
                inner.cancel_scope.cancel()
        finally:
            listener.close()
            client.close()
        assert x509.load_pem_x509_certificate(cert_pem).serial_number == leaf.serial_number


async def test_enrolled_sidecar_polls_controld_with_the_token_it_got(tmp_path: Path) -> None:
    """One credential per host: the join token. It pins controld's CA for enrollment over TLS,
    and its enrollment answer carries the sidecar token the snapshot long-poll then uses (no
    ``snapshot.controld.token`` configured), over mutual TLS too (an https controld URL)."""
    # Short leaves: a renewal (and with it a new sidecar token) happens during the test.
    async with running_daemon(tmp_path / "data", push=False, leaf_ttl_s=6) as (daemon, http):
        side = tmp_path / "web"
        side.mkdir()
        (side / "web.join").write_text(await join_token(http))
        bootstrap = {
            "service": "web",
            "app": f"127.0.0.1:{closed_port()}",
            "admin": "127.0.0.1:0",
            "inbound": "127.0.0.1:0",
            # The long-poll too goes to the TLS listener, verified like the identity calls.
            "snapshot": {
                "controld": {
                    "url": tls_url(daemon),
                    "cache_file": "web.snapshot.json",
                    "wait_s": 1,
                }
            },
            "identity": {
                "state_dir": "identity",
                "join_token_file": "web.join",
                "controld_url": tls_url(daemon),
            },
            "drain_timeout_s": 1,
            "drain_delay_s": 0,
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
            dump = (await admin_get(sidecar, "/config_dump")).json()
            assert dump["identity"]["identity"]["spiffe_id"].endswith("/svc/web")
            assert "key" not in str(dump["identity"]).lower()
            assert not (side / "web.join").exists()
            # The token was saved with the identity: a restart polls at once.
            saved = IdentityStore(side / "identity").load_sidecar_token()
            assert saved is not None
            assert saved.startswith("sidecar.")
            # A renewal brings a new token and revokes the old one: the long-poll switches to
            # the new one and keeps succeeding (the token never runs out).
            identity = sidecar.identity
            assert isinstance(identity, IdentityService)
            with trio.fail_after(TIMEOUT):
                while identity.sidecar_token == saved:
                    await trio.sleep(0.05)
            renewed = identity.sidecar_token
            with trio.fail_after(TIMEOUT):  # saved once the next renewal is scheduled
                while IdentityStore(side / "identity").load_sidecar_token() != renewed:
                    await trio.sleep(0.05)
            old = await http.post(
                "/v1/proxies/web-x",
                json={"proxy_id": "web-x", "service": "web"},
                headers={"Authorization": f"Bearer {saved}"},
            )
            assert old.status_code == 401
            failures, polls = control.failures, control.polls
            with trio.fail_after(TIMEOUT):
                while control.polls < polls + 3:
                    await trio.sleep(0.05)
            assert control.failures == failures, control.describe()["last_error"]
            # Telemetry reports go over mutual TLS with the latest token as well.
            policy = sidecar.stats.policy
            sent = policy.value("meshd_telemetry_reports", "sent")
            with trio.fail_after(TIMEOUT):
                while policy.value("meshd_telemetry_reports", "sent") < sent + 2:
                    await trio.sleep(0.05)
            inner.cancel_scope.cancel()
