"""JWKS parsing and the file and URL sources: reloads, TTL, rate-limited refresh, failures."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshcore.errors import ConfigError
from meshd.authn import FileJwks, JwksUnavailable, UrlJwks
from meshd.authn.jwks import JwksParseError, parse_jwks

from .support import FakeClock, JwksServer, SigningKey, jwks


def kids(keys: tuple[Any, ...]) -> list[str | None]:
    return [k.key_id for k in keys]


# --- parsing -----------------------------------------------------------------------------


def test_parse_keeps_only_asymmetric_signature_keys(
    rsa_key: SigningKey, ec_key: SigningKey, ed_key: SigningKey
) -> None:
    weak = SigningKey("weak", "RS256", rsa.generate_private_key(65537, 1024))
    p384 = SigningKey("p384", "ES384", ec.generate_private_key(ec.SECP384R1()))
    private = rsa_key.jwk() | {"kid": "private", "d": "AQAB"}
    doc = {
        "keys": [
            rsa_key.jwk(with_alg=True),
            ec_key.jwk(),
            ed_key.jwk(),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            rsa_key.jwk() | {"kid": "enc", "use": "enc"},
            rsa_key.jwk() | {"kid": "ops", "key_ops": ["encrypt"]},
            rsa_key.jwk() | {"kid": "ps", "alg": "PS256"},
            rsa_key.jwk() | {"kid": 12},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            {"kty": "EC", "kid": "no-xy", "crv": "P-256"},
            "not a key",
            weak.jwk(),
            p384.jwk(),
            private,
        ]
    }
    keys = parse_jwks(json.dumps(doc).encode())
    assert kids(keys.find(None)) == ["rsa-1", "ec-1", "ed-1"]
    assert kids(keys.find("ec-1")) == ["ec-1"]
    assert keys.find("hmac") == ()
    assert len(keys) == 3


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"[]", b'{"keys": {}}', b'{"keys": []}', b"\xff\xfe", b'{"nokeys": 1}'],
)
def test_parse_rejects_documents_without_keys(data: bytes) -> None:
    with pytest.raises(JwksParseError):
        parse_jwks(data)


def test_keys_without_kid_match_any_kid(rsa_key: SigningKey, ec_key: SigningKey) -> None:
    unnamed = ec_key.jwk()
    del unnamed["kid"]
    keys = parse_jwks(json.dumps({"keys": [rsa_key.jwk(), unnamed]}).encode())
    assert kids(keys.find("rsa-1")) == ["rsa-1", None]
    assert kids(keys.find("other")) == [None]


# --- file source -------------------------------------------------------------------------


def touch_later(path: Path, data: bytes) -> None:
    """Rewrite ``path`` with an mtime surely different from the previous one."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_bytes(data)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


async def test_file_reloaded_when_changed(
    tmp_path: Path, clock: FakeClock, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(rsa_key))
    source = FileJwks(path, clock=clock, check_interval_s=1.0)
    assert kids(await source.find(None)) == ["rsa-1"]
    assert source.loads == 1
    # Unchanged file: checked again after the interval, not re-read.
    clock.advance(2)
    await source.find("rsa-1")
    assert source.loads == 1
    # Changed file, known kid: picked up once the check interval has passed.
    touch_later(path, jwks(ec_key))
    assert kids(await source.find(None)) == ["rsa-1"]
    clock.advance(1.5)
    assert kids(await source.find(None)) == ["ec-1"]
    assert source.loads == 2


async def test_file_broken_or_gone_keeps_last_good(
    tmp_path: Path, clock: FakeClock, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(rsa_key))
    source = FileJwks(path, clock=clock)
    await source.find("rsa-1")
    touch_later(path, b'{"keys": [')
    clock.advance(5)
    assert kids(await source.find("rsa-1")) == ["rsa-1"]
    assert "not JSON" in source.last_error
    # The broken version is not re-parsed on every check.
    loads = source.loads
    clock.advance(5)
    await source.find("rsa-1")
    assert source.loads == loads
    path.unlink()
    clock.advance(5)
    assert kids(await source.find("rsa-1")) == ["rsa-1"]
    assert source.last_error
    touch_later(path, jwks(ec_key))
    clock.advance(5)
    assert kids(await source.find("ec-1")) == ["ec-1"]
    assert source.last_error == ""


async def test_file_missing_from_start(tmp_path: Path, clock: FakeClock) -> None:
    source = FileJwks(tmp_path / "nope.json", clock=clock)
    with pytest.raises(JwksUnavailable, match=r"nope\.json"):
        await source.find("k")


# --- URL source --------------------------------------------------------------------------


async def test_url_cached_for_default_ttl(
    jwks_server: JwksServer, clock: FakeClock, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    jwks_server.body = jwks(rsa_key)
    source = UrlJwks(jwks_server.url, clock=clock)
    assert kids(await source.find("rsa-1")) == ["rsa-1"]
    jwks_server.body = jwks(ec_key)
    clock.advance(299)
    for _ in range(5):
        assert kids(await source.find("rsa-1")) == ["rsa-1"]
    assert jwks_server.requests == 1
    clock.advance(2)
    assert kids(await source.find(None)) == ["ec-1"]
    assert jwks_server.requests == 2


async def test_url_honours_max_age(
    jwks_server: JwksServer, clock: FakeClock, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    jwks_server.body = jwks(rsa_key)
    jwks_server.cache_control = "public, max-age=60"
    source = UrlJwks(jwks_server.url, clock=clock)
    await source.find("rsa-1")
    jwks_server.body = jwks(ec_key)
    clock.advance(59)
    await source.find("rsa-1")
    assert jwks_server.requests == 1
    clock.advance(2)
    assert kids(await source.find(None)) == ["ec-1"]
    assert jwks_server.requests == 2


async def test_url_no_store_still_rate_limited(
    jwks_server: JwksServer, clock: FakeClock, rsa_key: SigningKey
) -> None:
    jwks_server.body = jwks(rsa_key)
    jwks_server.cache_control = "no-store"
    source = UrlJwks(jwks_server.url, clock=clock)
    for _ in range(5):
        await source.find("rsa-1")
    assert jwks_server.requests == 1
    clock.advance(30)
    await source.find("rsa-1")
    assert jwks_server.requests == 2


async def test_unknown_kid_refreshes_rate_limited(
    jwks_server: JwksServer,
    clock: FakeClock,
    rsa_key: SigningKey,
    rsa_key2: SigningKey,
) -> None:
    jwks_server.body = jwks(rsa_key)
    source = UrlJwks(jwks_server.url, clock=clock, min_refresh_interval_s=30)
    await source.find("rsa-1")
    clock.advance(40)
    # The IdP rotated: the unknown kid triggers an early refresh that finds it.
    jwks_server.body = jwks(rsa_key, rsa_key2)
    assert kids(await source.find("rsa-2")) == ["rsa-2"]
    assert jwks_server.requests == 2
    # Made-up kids don't cause a fetch storm: at most one fetch per interval.
    for i in range(20):
        assert await source.find(f"bogus-{i}") == ()
        clock.advance(1)
    assert jwks_server.requests == 2
    clock.advance(11)
    assert await source.find("bogus-again") == ()
    assert jwks_server.requests == 3
    assert await source.find("bogus-again") == ()
    assert jwks_server.requests == 3


async def test_concurrent_unknown_kids_share_one_fetch(
    jwks_server: JwksServer, clock: FakeClock, rsa_key: SigningKey, rsa_key2: SigningKey
) -> None:
    jwks_server.body = jwks(rsa_key, rsa_key2)
    source = UrlJwks(jwks_server.url, clock=clock)
    found: list[list[str | None]] = []

    async def one() -> None:
        found.append(kids(await source.find("rsa-2")))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(one)
    assert found == [["rsa-2"]] * 10
    assert jwks_server.requests == 1


async def test_url_failures_keep_last_good(
    jwks_server: JwksServer, clock: FakeClock, rsa_key: SigningKey
) -> None:
    jwks_server.body = jwks(rsa_key)
    source = UrlJwks(jwks_server.url, clock=clock, timeout_s=2)
    await source.find("rsa-1")
    # Server error past the TTL: the old set stays in service.
    jwks_server.status = 500
    clock.advance(301)
    assert kids(await source.find("rsa-1")) == ["rsa-1"]
    assert "500" in source.last_error
    # Garbage answer.
    jwks_server.status = 200
    jwks_server.body = b"<html>"
    clock.advance(31)
    assert kids(await source.find("rsa-1")) == ["rsa-1"]
    assert "JSON" in source.last_error
    # Server gone: connection refused, still the last good set.
    jwks_server.stop()
    clock.advance(31)
    fetches = source.fetches
    assert kids(await source.find("rsa-1")) == ["rsa-1"]
    assert source.fetches == fetches + 1
    assert source.last_error


async def test_url_down_from_start(clock: FakeClock, jwks_server: JwksServer) -> None:
    url = jwks_server.url
    jwks_server.stop()
    source = UrlJwks(url, clock=clock, timeout_s=2)
    with pytest.raises(JwksUnavailable):
        await source.find("k")
    # Retried at most once per interval, even with no set at all.
    with pytest.raises(JwksUnavailable):
        await source.find("k")
    assert source.fetches == 1


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://x/jwks", "jwks.json", "http://"])
def test_url_scheme_checked(url: str) -> None:
    with pytest.raises(ConfigError):
        UrlJwks(url)
