"""Join tokens, revocations and enroll/renew logic on an in-memory KV (``controld.ca``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ca_support import RECORD_KEY, FakeKV, make_csr, records
from cryptography.hazmat.primitives.asymmetric import ec

from controld.ca import (
    CertificateAuthority,
    CSRError,
    IdentityService,
    JoinTokenInvalid,
    RenewalRefused,
)
from controld.ca.jointokens import JOIN_TOKEN_KIND, JoinGrant, JoinTokens
from controld.ca.revocations import ServiceRevocations, revocation_key
from meshcore.pki import parse_join_token_pins, spki_pin

PREFIX = "meshd/"


async def test_join_token_is_single_use_and_stores_only_a_hash() -> None:
    kv = FakeKV()
    tokens = JoinTokens(records(kv), PREFIX)
    token, expires = await tokens.create("web", "default", 60, now=1000.0)
    assert expires == 1060.0
    _, token_id, secret = token.split(".")
    [key] = kv.entries
    assert key == f"{PREFIX}join-tokens/{token_id}"
    stored = kv.entries[key].value
    assert secret.encode() not in stored
    assert json.loads(stored)["body"]["service"] == "web"

    assert await tokens.consume(token, now=1001.0) == JoinGrant("web", "default")
    assert not kv.entries
    with pytest.raises(JoinTokenInvalid, match="unknown, used or expired"):
        await tokens.consume(token, now=1001.0)


async def test_join_token_refusals() -> None:
    kv = FakeKV()
    tokens = JoinTokens(records(kv), PREFIX)
    token, _ = await tokens.create("web", "default", 60, now=1000.0)
    _, token_id, secret = token.split(".")
    for bad in ("", "join.x.y", f"join.{token_id}.{'A' * 43}", f"sidecar.{token_id}.{secret}"):
        with pytest.raises(JoinTokenInvalid):
            await tokens.consume(bad, now=1001.0)
    assert kv.entries  # wrong secrets don't burn the token
    with pytest.raises(JoinTokenInvalid):
        await tokens.consume(token, now=1060.0)
    assert not kv.entries  # an expired token is removed


async def test_a_used_marker_blocks_a_racing_consumer() -> None:
    # The winner's CAS write leaves a "used" marker until its delete: a second consumer
    # reading the entry before the delete sees it as used.
    kv = FakeKV()
    tokens = JoinTokens(records(kv), PREFIX)
    token, _ = await tokens.create("web", "default", 60)
    [key] = kv.entries
    entry = kv.entries[key]
    body = RECORD_KEY.open(JOIN_TOKEN_KIND, key, entry.value)
    body["used"] = True
    sealed = RECORD_KEY.seal(JOIN_TOKEN_KIND, key, body)
    assert await kv.kv_put(key, sealed, cas=entry.modify_index)
    with pytest.raises(JoinTokenInvalid):
        await tokens.consume(token)


async def test_join_token_pins(tmp_path: Path) -> None:
    """Pins are carried, optional for controld, and must be well formed when present."""
    kv = FakeKV()
    tokens = JoinTokens(records(kv), PREFIX)
    pin = "p" * 43
    pinned, _ = await tokens.create("web", "default", 60, pins=(pin,), now=1000.0)
    assert parse_join_token_pins(pinned) == (pin,)
    for bad in (f"{pinned[:-1]}", f"{pinned}.short", f"{pinned}.{pin}.{pin}"):
        with pytest.raises(JoinTokenInvalid):  # malformed, or more pins than roots can be
            await tokens.consume(bad, now=1001.0)
    assert await tokens.consume(pinned, now=1001.0) == JoinGrant("web", "default")
    # A token minted without pins (an older meshctl or the API alone) still enrolls.
    bare, _ = await tokens.create("api", "default", 60, now=1000.0)
    assert parse_join_token_pins(bare) == ()
    assert await tokens.consume(bare, now=1001.0) == JoinGrant("api", "default")

    # During a rotation the bundle holds two roots: two pins, the signer first.
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    service = IdentityService(
        ca, FakeKV(), PREFIX, record_key=RECORD_KEY, trust_domain=lambda: "mesh.local"
    )
    old = ca.signer.cert
    assert service.pins() == (spki_pin(old),)
    new = ca.stage_new_root().cert
    assert service.pins() == (spki_pin(old), spki_pin(new))
    ca.activate()
    assert service.pins() == (spki_pin(new), spki_pin(old))
    token, _ = await service.join_tokens.create("web", "default", 60, pins=service.pins())
    assert parse_join_token_pins(token) == (spki_pin(new), spki_pin(old))


async def test_revocations() -> None:
    kv = FakeKV()
    revocations = ServiceRevocations(records(kv), PREFIX)
    ident = "spiffe://mesh.local/ns/default/svc/web"
    assert not await revocations.is_revoked(ident)
    await revocations.revoke(ident)
    await revocations.revoke(ident)
    assert await revocations.is_revoked(ident)
    assert list(kv.entries) == [revocation_key(PREFIX, ident)]
    assert "/" not in revocation_key(PREFIX, ident).removeprefix(f"{PREFIX}revoked/")


async def test_enroll_then_renew(tmp_path: Path) -> None:
    kv = FakeKV()
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    service = IdentityService(
        ca, kv, PREFIX, record_key=RECORD_KEY, trust_domain=lambda: "corp.example"
    )
    token, _ = await service.join_tokens.create("web", "prod", 60)

    with pytest.raises(CSRError):
        await service.enroll(token, "not a csr")
    csr, key = make_csr()
    issued = await service.enroll(token, csr)  # the bad CSR didn't burn the token
    assert issued.spiffe_id == "spiffe://corp.example/ns/prod/svc/web"
    answer = issued.as_json()
    assert answer["bundle"] == ca.bundle_pem()
    assert str(answer["not_after"]).endswith("Z")
    with pytest.raises(JoinTokenInvalid):
        await service.enroll(token, csr)

    assert isinstance(key, ec.EllipticCurvePrivateKey)
    new_csr, _ = make_csr()
    renewed = await service.renew(new_csr, issued.certificate)
    assert renewed.spiffe_id == issued.spiffe_id
    assert renewed.certificate.serial_number != issued.certificate.serial_number

    # A certificate of another CA (the TLS layer refuses it first) and a revoked identity.
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    public = issued.certificate.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    stranger = other.sign(public, issued.spiffe_id)
    with pytest.raises(RenewalRefused, match="bundle"):
        await service.renew(new_csr, stranger)
    with pytest.raises(CSRError):
        await service.renew("not a csr", issued.certificate)
    await service.revoke_service(issued.spiffe_id)
    with pytest.raises(RenewalRefused, match="revoked"):
        await service.renew(new_csr, issued.certificate)
    with pytest.raises(RenewalRefused, match="revoked"):
        await service.renew(new_csr, renewed.certificate)
