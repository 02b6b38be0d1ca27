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
from controld.ca.errors import IdentityNotFound
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


async def test_revocation_per_instance_by_id_or_serial(tmp_path: Path) -> None:
    kv = FakeKV()
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    service = IdentityService(ca, kv, PREFIX, record_key=RECORD_KEY, trust_domain=lambda: "m")
    issued = []
    for instance in ("web-a", "web-b", "web-c"):
        token, _ = await service.join_tokens.create("web", "default", 60)
        issued.append(await service.enroll(token, make_csr()[0], instance=instance))
    a, b, c = issued
    assert len({x.identity_id for x in issued}) == 3
    records = {r.instance: r for r in await service.identities.all()}
    assert records["web-a"].current is not None
    assert records["web-a"].current.serial == format(a.certificate.serial_number, "x")
    renewed_a = await service.renew(make_csr()[0], a.certificate)
    assert renewed_a.identity_id == a.identity_id  # a renewal continues the identity

    index = ca.index
    await service.revoke_identity(a.identity_id)
    assert ca.index > index  # the bundle long-polls wake
    revoked = {leaf.serial for leaf in service.revoked_leaves()}
    assert revoked == {a.certificate.serial_number, renewed_a.certificate.serial_number}
    for cert in (a.certificate, renewed_a.certificate):
        with pytest.raises(RenewalRefused, match="revoked"):
            await service.renew(make_csr()[0], cert)
    # The other instances of the same service renew.
    assert (await service.renew(make_csr()[0], b.certificate)).identity_id == b.identity_id

    # By serial: the instance holding it.
    record = await service.revoke_serial(c.certificate.serial_number)
    assert record.id == c.identity_id and record.revoked is not None
    with pytest.raises(RenewalRefused, match="revoked"):
        await service.renew(make_csr()[0], c.certificate)
    with pytest.raises(IdentityNotFound):
        await service.revoke_serial(12345)
    with pytest.raises(IdentityNotFound):
        await service.revoke_identity("0123456789abcdef")

    # A forged record (not sealed by this key) is skipped by listings and counted.
    await kv.kv_put(f"{PREFIX}identities/0123456789abcdef", b'{"v": 1, "body": {}, "mac": "x"}')
    assert len(await service.identities.all()) == 3
    assert service.records.invalid == {"identity": 1}


async def test_a_leaf_from_before_identities_is_adopted_on_renewal(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    service = IdentityService(
        ca, FakeKV(), PREFIX, record_key=RECORD_KEY, trust_domain=lambda: "mesh.local"
    )
    _, key = make_csr()
    public = key.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    old = ca.sign(public, "spiffe://mesh.local/ns/default/svc/web")  # no identity id
    renewed = await service.renew(make_csr()[0], old)
    [record] = await service.identities.all()
    assert record.id == renewed.identity_id and record.instance is None
    await service.revoke_service("spiffe://mesh.local/ns/default/svc/web")
    with pytest.raises(RenewalRefused, match="revoked"):
        await service.renew(make_csr()[0], old)
