"""JwtValidator: signatures, algorithms, registered claims, header parsing, forwarded claims."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from meshcore.model.policy import JwtRequirement
from meshd.authn import (
    Claims,
    FileJwks,
    JwksUnavailable,
    JwtInvalid,
    JwtMissing,
    JwtValidator,
    UrlJwks,
    jwks_source_for,
)

from .support import FakeClock, JwksServer, SigningKey, b64, jwks, raw_token

ISSUER = "https://idp.example"


def requirement(jwks_file: Path, **kw: Any) -> JwtRequirement:
    return JwtRequirement(issuer=ISSUER, jwks_file=str(jwks_file), **kw)


def claims_at(clock: FakeClock, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": "orders",
        "iat": int(clock.now),
        "exp": int(clock.now) + 600,
    }
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: SigningKey, ec_key: SigningKey, ed_key: SigningKey) -> Path:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(rsa_key, ec_key, ed_key))
    return path


def make(jwks_file: Path, clock: FakeClock, **kw: Any) -> JwtValidator:
    req = requirement(jwks_file, **kw)
    return JwtValidator(req, FileJwks(jwks_file, clock=clock), clock=clock)


async def refused(validator: JwtValidator, header: bytes | None) -> str:
    with pytest.raises(JwtInvalid) as info:
        await validator.validate(header)
    return info.value.reason


@pytest.mark.parametrize("key_name", ["rsa_key", "ec_key", "ed_key"])
async def test_good_token_gives_claims(
    request: pytest.FixtureRequest, key_name: str, jwks_file: Path, clock: FakeClock
) -> None:
    key: SigningKey = request.getfixturevalue(key_name)
    validator = make(jwks_file, clock, audiences=("orders",))
    claims = await validator.validate(key.bearer(claims_at(clock, scope="read")))
    assert isinstance(claims, Claims)
    assert claims.subject == "alice"
    assert claims.issuer == ISSUER
    assert claims["scope"] == "read"
    assert dict(claims)["aud"] == "orders"


async def test_token_without_kid_tries_every_key(
    jwks_file: Path, clock: FakeClock, ec_key: SigningKey
) -> None:
    validator = make(jwks_file, clock)
    token = ec_key.sign(claims_at(clock), kid=None)
    assert "kid" not in json.loads(base64.urlsafe_b64decode(token.split(b".")[0] + b"=="))
    claims = await validator.validate(b"Bearer " + token)
    assert claims.subject == "alice"


async def test_bad_signature(
    jwks_file: Path, clock: FakeClock, rsa_key: SigningKey, rsa_key2: SigningKey
) -> None:
    validator = make(jwks_file, clock)
    # Signed by another key under a known kid.
    impostor = SigningKey(rsa_key.kid, "RS256", rsa_key2.private)
    assert await refused(validator, impostor.bearer(claims_at(clock))) == "bad_signature"
    # A genuine token whose payload was swapped.
    head, _, sig = rsa_key.sign(claims_at(clock)).split(b".")
    forged = b64(json.dumps(claims_at(clock, sub="root")).encode())
    assert await refused(validator, b"Bearer " + b".".join([head, forged, sig])) == "bad_signature"


async def test_expiry_with_skew(jwks_file: Path, clock: FakeClock, rsa_key: SigningKey) -> None:
    validator = make(jwks_file, clock, clock_skew_s=30)
    now = int(clock.now)
    ok = await validator.validate(rsa_key.bearer(claims_at(clock, exp=now - 20)))
    assert ok.subject == "alice"
    assert await refused(validator, rsa_key.bearer(claims_at(clock, exp=now - 31))) == "expired"
    strict = make(jwks_file, clock, clock_skew_s=0)
    assert await refused(strict, rsa_key.bearer(claims_at(clock, exp=now - 1))) == "expired"
    # The clock moving past exp + skew turns a good token bad.
    token = rsa_key.bearer(claims_at(clock, exp=now + 10))
    await validator.validate(token)
    clock.advance(45)
    assert await refused(validator, token) == "expired"


async def test_not_before_with_skew(jwks_file: Path, clock: FakeClock, ec_key: SigningKey) -> None:
    validator = make(jwks_file, clock, clock_skew_s=30)
    now = int(clock.now)
    await validator.validate(ec_key.bearer(claims_at(clock, nbf=now + 25)))
    token = ec_key.bearer(claims_at(clock, nbf=now + 60))
    assert await refused(validator, token) == "not_yet_valid"
    clock.advance(31)
    assert (await validator.validate(token)).subject == "alice"


async def test_exp_required_and_numeric(
    jwks_file: Path, clock: FakeClock, rsa_key: SigningKey
) -> None:
    validator = make(jwks_file, clock)
    assert await refused(validator, rsa_key.bearer(claims_at(clock, exp=None))) == "missing_claim"
    assert await refused(validator, rsa_key.bearer(claims_at(clock, exp="later"))) == "malformed"
    assert await refused(validator, rsa_key.bearer(claims_at(clock, exp=True))) == "malformed"
    assert await refused(validator, rsa_key.bearer(claims_at(clock, nbf="now"))) == "malformed"
    # json.dumps writes inf as Infinity; a never-expiring token must not slip through.
    assert await refused(validator, rsa_key.bearer(claims_at(clock, exp=float("inf")))) == (
        "malformed"
    )


async def test_wrong_issuer(jwks_file: Path, clock: FakeClock, rsa_key: SigningKey) -> None:
    validator = make(jwks_file, clock)
    token = rsa_key.bearer(claims_at(clock, iss="https://evil.example"))
    assert await refused(validator, token) == "wrong_issuer"
    assert await refused(validator, rsa_key.bearer(claims_at(clock, iss=None))) == "wrong_issuer"


async def test_audience(jwks_file: Path, clock: FakeClock, rsa_key: SigningKey) -> None:
    validator = make(jwks_file, clock, audiences=("orders", "billing"))
    await validator.validate(rsa_key.bearer(claims_at(clock, aud="billing")))
    await validator.validate(rsa_key.bearer(claims_at(clock, aud=["other", "orders"])))
    for aud in ("other", ["x", "y"], None, 7, [7]):
        token = rsa_key.bearer(claims_at(clock, aud=aud))
        assert await refused(validator, token) == "wrong_audience", aud
    # No audiences configured: any (or none) is fine.
    anyone = make(jwks_file, clock)
    await anyone.validate(rsa_key.bearer(claims_at(clock, aud="whatever")))
    await anyone.validate(rsa_key.bearer(claims_at(clock, aud=None)))


async def test_alg_none_and_hmac_refused(
    jwks_file: Path, clock: FakeClock, rsa_key: SigningKey
) -> None:
    validator = make(jwks_file, clock)
    claims = claims_at(clock)
    for alg in ("none", "None", "NONE"):
        token = raw_token({"alg": alg, "kid": rsa_key.kid}, claims)
        assert await refused(validator, b"Bearer " + token) == "disallowed_algorithm"
    # Classic key confusion: HS256 keyed with the issuer's public key (which anyone has).
    public_pem = rsa_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = b64(json.dumps({"alg": "HS256", "kid": rsa_key.kid}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(public_pem, head + b"." + body, hashlib.sha256).digest()
    token = head + b"." + body + b"." + b64(mac)
    assert await refused(validator, b"Bearer " + token) == "disallowed_algorithm"
    # An allowed alg that doesn't fit the kid's key (EC claims to be RS256) finds no key.
    ec_as_rsa = raw_token({"alg": "ES256", "kid": rsa_key.kid}, claims, b"x" * 64)
    assert await refused(validator, b"Bearer " + ec_as_rsa) == "unknown_kid"
    for alg in ("RS384", "PS256", "ES512"):
        token = raw_token({"alg": alg, "kid": rsa_key.kid}, claims, b"sig")
        assert await refused(validator, b"Bearer " + token) == "disallowed_algorithm"


async def test_missing_and_malformed_header(
    jwks_file: Path, clock: FakeClock, rsa_key: SigningKey
) -> None:
    validator = make(jwks_file, clock)
    for missing in (None, b"", b"Basic YWxhZGRpbjpvcGVuc2VzYW1l", b"Token abc"):
        with pytest.raises(JwtMissing):
            await validator.validate(missing)
    good = rsa_key.sign(claims_at(clock))
    assert (await validator.validate(b"bearer  " + good + b" ")).subject == "alice"
    malformed = [
        b"Bearer",
        b"Bearer ",
        b"Bearer abc",
        b"Bearer a.b",
        b"Bearer a.b.c.d",
        b"Bearer a.b.c",
        b"Bearer " + good + b" extra",
        b"Bearer \xff\xfe.a.b",
        b"Bearer " + b"a" * 20000 + b".b.c",
        b"Bearer " + raw_token({"alg": "RS256", "kid": 7}, claims_at(clock)),
        b"Bearer " + b64(b"[1,2]") + b"." + b64(b"{}") + b".c2ln",
        b"Bearer " + raw_token({"alg": "RS256", "kid": rsa_key.kid, "crit": ["exp"]}, {}),
    ]
    for header in malformed:
        assert await refused(validator, header) == "malformed", header[:40]
    # A correctly signed payload that isn't a JSON object.
    head = b64(json.dumps({"alg": "RS256", "kid": rsa_key.kid, "typ": "JWT"}).encode())
    body = b64(b"[1, 2, 3]")
    signing_input = head + b"." + body
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    assert isinstance(rsa_key.private, rsa.RSAPrivateKey)
    sig = rsa_key.private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    assert await refused(validator, b"Bearer " + signing_input + b"." + b64(sig)) == "malformed"


async def test_unknown_kid_and_file_rotation(
    tmp_path: Path, clock: FakeClock, rsa_key: SigningKey, rsa_key2: SigningKey
) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(rsa_key))
    validator = JwtValidator(requirement(path), FileJwks(path, clock=clock), clock=clock)
    token = rsa_key2.bearer(claims_at(clock))
    assert await refused(validator, token) == "unknown_kid"
    # Rotation: the file now lists the new key; the unknown kid re-checks the file at once.
    path.write_bytes(jwks(rsa_key, rsa_key2) + b"\n")
    assert (await validator.validate(token)).subject == "alice"


async def test_cached_token_rechecked(
    tmp_path: Path, clock: FakeClock, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(rsa_key, ec_key))
    source = FileJwks(path, clock=clock, check_interval_s=1)
    validator = JwtValidator(requirement(path), source, clock=clock, cache_size=2)
    tokens = [rsa_key.bearer(claims_at(clock, n=i)) for i in range(3)]
    for _ in range(2):
        for i, token in enumerate(tokens):
            assert (await validator.validate(token))["n"] == i
    # The issuer dropped the key: tokens it signed stop working, cached or not.
    path.write_bytes(jwks(ec_key))
    os.utime(path, ns=(1, 1))
    clock.advance(2)
    for token in tokens:
        assert await refused(validator, token) == "unknown_kid"
    uncached = JwtValidator(requirement(path), source, clock=clock, cache_size=0)
    token = ec_key.bearer(claims_at(clock))
    assert (await uncached.validate(token)).subject == "alice"
    assert (await uncached.validate(token)).subject == "alice"


async def test_no_keys_loaded(tmp_path: Path, clock: FakeClock, rsa_key: SigningKey) -> None:
    path = tmp_path / "absent.json"
    validator = JwtValidator(requirement(path), FileJwks(path, clock=clock), clock=clock)
    with pytest.raises(JwksUnavailable):
        await validator.validate(rsa_key.bearer(claims_at(clock)))


async def test_url_source_rotation_end_to_end(
    jwks_server: JwksServer, clock: FakeClock, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    jwks_server.body = jwks(rsa_key)
    req = JwtRequirement(issuer=ISSUER, jwks_uri=jwks_server.url)
    source = jwks_source_for(req, clock=clock)
    assert isinstance(source, UrlJwks)
    validator = JwtValidator(req, source, clock=clock)
    await validator.validate(rsa_key.bearer(claims_at(clock)))
    jwks_server.body = jwks(rsa_key, ec_key)
    clock.advance(31)
    assert (await validator.validate(ec_key.bearer(claims_at(clock)))).subject == "alice"
    assert jwks_server.requests == 2


def test_forwarded_headers(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    req = requirement(
        path,
        forward_claims={
            "sub": "X-Jwt-Sub",
            "groups": "x-jwt-groups",
            "tenant": "x-jwt-tenant",
            "n": "x-jwt-n",
            "name": "x-jwt-name",
            "evil": "x-jwt-evil",
            "nested": "x-jwt-nested",
            "absent": "x-jwt-absent",
        },
    )
    validator = JwtValidator(req, FileJwks(path))
    claims = Claims(
        {
            "sub": "alice",
            "groups": ["admin", "ops"],
            "tenant": {"id": 7, "name": "zoë"},
            "n": 42,
            "name": "Zoë",
            "evil": "x\r\nSet-Cookie: a=b",
            "nested": {"a": "line\nbreak"},
        }
    )
    headers = dict(validator.forwarded_headers(claims))
    assert headers == {
        b"x-jwt-sub": b"alice",
        b"x-jwt-groups": b'["admin","ops"]',
        b"x-jwt-tenant": b'{"id":7,"name":"zo\\u00eb"}',
        b"x-jwt-n": b"42",
        b"x-jwt-name": "Zoë".encode(),
        b"x-jwt-nested": b'{"a":"line\\nbreak"}',
    }
    assert set(validator.forwarded_header_names) == {
        b"x-jwt-sub",
        b"x-jwt-groups",
        b"x-jwt-tenant",
        b"x-jwt-n",
        b"x-jwt-name",
        b"x-jwt-evil",
        b"x-jwt-nested",
        b"x-jwt-absent",
    }
    for _, value in validator.forwarded_headers(claims):
        assert b"\r" not in value and b"\n" not in value


async def test_forwarded_headers_from_validated_token(
    jwks_file: Path, clock: FakeClock, ec_key: SigningKey
) -> None:
    validator = make(jwks_file, clock, forward_claims={"sub": "x-user", "roles": "x-roles"})
    claims = await validator.validate(ec_key.bearer(claims_at(clock, roles=["a"])))
    assert validator.forwarded_headers(claims) == [(b"x-user", b"alice"), (b"x-roles", b'["a"]')]
