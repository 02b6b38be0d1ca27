"""The CA's KV records can't be forged and never stop controld (a real daemon, a real registry).

The attacker here has write access to the registry (its management token, through py-consul,
as any registry client would): it can write anything under controld's KV prefix, but not
controld's record key.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from pathlib import Path

import consul
import httpx
import pytest
import trio
from cryptography import x509
from daemon_support import TIMEOUT, running_daemon, tls_url
from test_enroll import Sidecar, join_token

from controld.daemon import ControlDaemon

pytestmark = pytest.mark.timeout(120)

DEEP = b"[" * 5000 + b"]" * 5000


def registry(daemon: ControlDaemon) -> consul.Consul:
    """A py-consul client with the registry's management token (an attacker's reach)."""
    assert daemon.ports is not None and daemon.ports.registry_port is not None
    assert daemon.config.registry is not None
    token = daemon.config.registry.acl_management_token
    return consul.Consul(host="127.0.0.1", port=daemon.ports.registry_port, token=token)


async def kv_put(daemon: ControlDaemon, key: str, value: bytes) -> None:
    client = registry(daemon)
    assert await trio.to_thread.run_sync(lambda: client.kv.put(key, value))


def invalid_count(metrics: str, kind: str) -> float:
    pattern = rf'^controld_ca_invalid_records_total\{{kind="{kind}"\}} ([0-9.e+]+)$'
    found = re.search(pattern, metrics, re.MULTILINE)
    return 0.0 if found is None else float(found.group(1))


async def test_forged_join_token_does_not_enroll(tmp_path: Path) -> None:
    async with (
        running_daemon(tmp_path / "data") as (daemon, http),
        httpx.AsyncClient(base_url=str(http.base_url), timeout=TIMEOUT) as anon,
    ):
        prefix = daemon.config.kv_prefix
        secret = secrets.token_urlsafe(32)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        body = {
            "service": "payments",
            "namespace": "default",
            "expires": time.time() + 3600,
            "secret_sha256": digest,
            "used": False,
        }
        # What controld used to store, and the sealed shape with a made-up seal.
        plain_id, sealed_id = secrets.token_hex(16), secrets.token_hex(16)
        await kv_put(daemon, f"{prefix}join-tokens/{plain_id}", json.dumps(body).encode())
        fake_seal = {"v": 1, "body": body, "mac": "A" * 43}
        await kv_put(daemon, f"{prefix}join-tokens/{sealed_id}", json.dumps(fake_seal).encode())
        for token_id in (plain_id, sealed_id):
            attacker = Sidecar(anon, tls_url(daemon))
            resp = await attacker.enroll(f"join.{token_id}.{secret}")
            assert resp.status_code == 401, resp.text
            assert "sidecar_token" not in resp.json()
        metrics = (await http.get("/metrics")).text
        assert invalid_count(metrics, "join-token") == 2
        # A genuine token still enrolls.
        web = Sidecar(anon, tls_url(daemon))
        assert (await web.enroll(await join_token(http))).status_code == 200


async def test_malformed_records_are_skipped_controld_serves_and_renews(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with (
        running_daemon(data) as (daemon, http),
        httpx.AsyncClient(base_url=str(http.base_url), timeout=TIMEOUT) as anon,
    ):
        prefix = daemon.config.kv_prefix
        web = Sidecar(anon, tls_url(daemon))
        assert (await web.enroll(await join_token(http))).status_code == 200
        roots = web.answer["bundle"]
        bad = {
            f"{prefix}identities/00000000000000aa": DEEP,
            f"{prefix}identities/00000000000000bb": b"\xff not json",
            f"{prefix}identities/00000000000000cc": b'{"v": 1, "body": {}, "mac": "x"}',
            f"{prefix}join-tokens/{'d' * 32}": b"[" * 100 + b"]" * 100,
            f"{prefix}revoked/c3BpZmZlOi8v": b'"' + b"x" * 200_000 + b'"',
        }
        for key, value in bad.items():
            await kv_put(daemon, key, value)
        # Listing and refreshing skip them; the good identity is still there.
        listed = await http.get("/v1/identities")
        assert listed.status_code == 200, listed.text
        assert [i["id"] for i in listed.json()["identities"]] == [web.answer["identity_id"]]
        assert (await web.renew(roots)).status_code == 200
    # controld starts with the bad records in the KV, serves and renews.
    async with (
        running_daemon(data) as (daemon, http),
        httpx.AsyncClient(base_url=str(http.base_url), timeout=TIMEOUT) as anon,
    ):
        assert (await anon.get("/v1/bundle")).status_code == 200
        web.anon = anon
        web.tls = tls_url(daemon)
        assert (await web.renew(roots)).status_code == 200, web.answer
        other = Sidecar(anon, tls_url(daemon))
        assert (await other.enroll(await join_token(http, "api"))).status_code == 200
        assert (await http.post("/v1/tokens/join", json={"service": "x"})).status_code == 200
        metrics = (await http.get("/metrics")).text
        assert invalid_count(metrics, "identity") >= 3  # at start, counted
        listed = (await http.get("/v1/identities")).json()["identities"]
        assert {i["service"] for i in listed} == {"web", "api"}


async def test_an_older_record_put_back_does_not_take_a_revocation_back(
    tmp_path: Path,
) -> None:
    """A registry writer can't unseal a record, but can put back an older sealed copy of it
    (or delete it): the revoked leaves stay revoked, for renewal and in the bundle, across a
    restart too."""
    data = tmp_path / "data"
    async with (
        running_daemon(data) as (daemon, http),
        httpx.AsyncClient(base_url=str(http.base_url), timeout=TIMEOUT) as anon,
    ):
        prefix = daemon.config.kv_prefix
        web = Sidecar(anon, tls_url(daemon))
        assert (await web.enroll(await join_token(http))).status_code == 200
        ident = web.answer["identity_id"]
        key = f"{prefix}identities/{ident}"
        client = registry(daemon)
        _, before = await trio.to_thread.run_sync(lambda: client.kv.get(key))
        assert (await http.post("/v1/revocations", json={"identity": ident})).status_code == 200
        serial = x509.load_pem_x509_certificate(web.answer["certificate"].encode()).serial_number
        await kv_put(daemon, key, before["Value"])  # the sealed, not yet revoked copy
        assert daemon.identity is not None
        await daemon.identity.refresh_revocations()
        refused = await web.renew(web.answer["bundle"])
        assert refused.status_code == 401
        assert "revoked" in refused.json()["error"]
        revoked = (await anon.get("/v1/bundle")).json()["revoked"]
        assert format(serial, "x") in [r["serial"] for r in revoked]
        other = Sidecar(anon, tls_url(daemon))
        assert (await other.enroll(await join_token(http))).status_code == 200
        other_id = other.answer["identity_id"]
        assert (await http.post("/v1/revocations", json={"identity": other_id})).status_code == 200
        await trio.to_thread.run_sync(lambda: client.kv.delete(f"{prefix}identities/{other_id}"))
    async with (
        running_daemon(data) as (daemon, http),
        httpx.AsyncClient(base_url=str(http.base_url), timeout=TIMEOUT) as anon,
    ):
        revoked = [r["serial"] for r in (await anon.get("/v1/bundle")).json()["revoked"]]
        other_serial = x509.load_pem_x509_certificate(
            other.answer["certificate"].encode()
        ).serial_number
        assert {format(serial, "x"), format(other_serial, "x")} <= set(revoked)
        for sidecar in (web, other):
            sidecar.anon, sidecar.tls = anon, tls_url(daemon)
            assert (await sidecar.renew(sidecar.answer["bundle"])).status_code == 401
