"""Sidecar token records: expiry, revocation one by one, sealed records, the read cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from controld.sealed import RecordKey
from controld.sidecar_tokens import REFRESH_S, SidecarTokens, TokenRefused

# The in-memory KV of the CA tests (one definition), importable when only these tests run.
sys.path.insert(0, str(Path(__file__).parent / "ca"))
from ca_support import FakeKV

pytestmark = pytest.mark.timeout(30)

KEY = RecordKey(b"k" * 32)
WEB_ID = "spiffe://mesh.local/ns/default/svc/web"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _store(kv: FakeKV, clock: Clock, **kwargs: object) -> SidecarTokens:
    return SidecarTokens(kv, "meshd/", KEY, clock=clock, monotonic=clock, **kwargs)  # type: ignore[arg-type]


async def test_expired_token_is_refused() -> None:
    clock = Clock()
    store = _store(FakeKV(), clock)
    token, record = await store.mint("web", ttl_s=60)
    assert (await store.verify(token)).id == record.id
    clock.now += 59
    await store.verify(token)
    clock.now += 1
    with pytest.raises(TokenRefused, match="expired"):
        await store.verify(token)


async def test_revoking_one_token_keeps_the_others() -> None:
    clock = Clock()
    kv = FakeKV()
    store = _store(kv, clock)
    first, one = await store.mint("web")
    second, two = await store.mint("web")
    assert await store.revoke(one.id)
    with pytest.raises(TokenRefused):
        await store.verify(first)
    assert (await store.verify(second)).id == two.id
    assert not await store.revoke(one.id)  # already gone
    assert [r.id for r in await store.list()] == [two.id]


async def test_record_holds_no_secret_and_is_sealed() -> None:
    kv = FakeKV()
    store = _store(kv, Clock())
    token, record = await store.mint("web", identity=WEB_ID, serial="abc1")
    secret = token.rpartition(".")[2]
    raw = kv.entries[store.key_of(record.id)].value
    assert secret.encode() not in raw
    body = json.loads(raw)["body"]
    assert body["identity"] == WEB_ID and body["serial"] == "abc1"
    assert set(record.as_json()) == {
        "id",
        "service",
        "namespace",
        "identity",
        "serial",
        "created",
        "expires",
    }


async def test_forged_or_malformed_records_are_skipped_and_counted() -> None:
    clock = Clock()
    kv = FakeKV()
    metrics = CollectorRegistry()
    store = _store(kv, clock, metrics=metrics)
    good, record = await store.mint("web")
    # A registry writer without the record key: a token it made up, and a deep value.
    forged_id = "0" * 32
    body = {
        "service": "payments",
        "namespace": "default",
        "identity": None,
        "serial": None,
        "secret_sha256": "0" * 64,
        "created": clock.now,
        "expires": clock.now + 60,
    }
    forged = RecordKey(b"x" * 32).seal("sidecar-token", store.key_of(forged_id), body)
    await kv.kv_put(store.key_of(forged_id), forged)
    await kv.kv_put(store.key_of("1" * 32), b"[" * 100_000)
    # A sealed record copied to another id doesn't open either (the key is in the MAC).
    await kv.kv_put(store.key_of("2" * 32), kv.entries[store.key_of(record.id)].value)
    with pytest.raises(TokenRefused):
        await store.verify(f"sidecar.{forged_id}.{'A' * 43}")
    assert [r.id for r in await store.list()] == [record.id]
    assert store.invalid_records == 4
    assert metrics.get_sample_value("controld_sidecar_token_invalid_records_total") == 4
    assert (await store.verify(good)).service == "web"


async def test_revocation_by_another_replica_is_seen_after_the_refresh() -> None:
    clock = Clock()
    kv = FakeKV()
    here, there = _store(kv, clock), _store(kv, clock)
    token, record = await here.mint("web")
    await here.verify(token)
    assert await there.revoke(record.id)
    clock.now += REFRESH_S
    with pytest.raises(TokenRefused):
        await here.verify(token)


async def test_revoke_bound_revokes_only_that_leafs_tokens() -> None:
    store = _store(FakeKV(), Clock())
    old, _ = await store.mint("web", identity=WEB_ID, serial="a1")
    new, _ = await store.mint("web", identity=WEB_ID, serial="b2")
    other, _ = await store.mint("web")
    assert await store.revoke_bound(WEB_ID, "a1") == 1
    with pytest.raises(TokenRefused):
        await store.verify(old)
    await store.verify(new)
    await store.verify(other)


async def test_list_drops_expired_records() -> None:
    clock = Clock()
    kv = FakeKV()
    store = _store(kv, clock)
    _, short = await store.mint("web", ttl_s=10)
    _, long = await store.mint("api", ttl_s=100)
    clock.now += 10
    assert [r.id for r in await store.list()] == [long.id]
    assert store.key_of(short.id) not in kv.entries


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl_s": 0}, "TTL"),
        ({"ttl_s": 10 * 365 * 86400}, "TTL"),
        ({"identity": "https://x"}, "identity"),
        ({"serial": "xyz"}, "serial"),
    ],
)
async def test_mint_refuses_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await _store(FakeKV(), Clock()).mint("web", **kwargs)  # type: ignore[arg-type]


async def test_token_bound_to_a_revoked_leaf_is_refused() -> None:
    revoked: set[int] = set()
    store = SidecarTokens(FakeKV(), "meshd/", KEY, leaf_revoked=revoked.__contains__)
    bound, _ = await store.mint("web", identity=WEB_ID, serial="a1")
    unbound, _ = await store.mint("web")
    await store.verify(bound)
    revoked.add(0xA1)
    with pytest.raises(TokenRefused, match="revoked certificate"):
        await store.verify(bound)
    await store.verify(unbound)
