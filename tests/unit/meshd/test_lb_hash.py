"""Ring hash and maglev: stickiness, weights, and the 1/N remap bound, tested with values."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence

import pytest

from meshcore.model import Endpoint
from meshd.cluster.lb import Balancer
from meshd.cluster.lb_hash import HashTables, Maglev, RingHash, hash_key

pytestmark = pytest.mark.timeout(60)

Build = Callable[[Sequence[Endpoint]], Balancer]
BUILDERS: dict[str, Build] = {"ring_hash": RingHash, "maglev": Maglev}
KEYS = [hash_key(f"user-{i}".encode()) for i in range(20_000)]


def ep(name: str, weight: int = 1) -> Endpoint:
    return Endpoint(host=name, port=8080, weight=weight)


def owners(balancer: Balancer, keys: Sequence[int] = KEYS) -> list[str]:
    out = []
    for key in keys:
        picked = balancer.pick(key)
        assert picked is not None
        out.append(picked.host)
    return out


def test_hash_key_is_a_stable_64_bit_value() -> None:
    assert hash_key(b"alice") == hash_key(b"alice")
    assert hash_key(b"alice") != hash_key(b"bob")
    assert 0 <= hash_key(b"alice") < 2**64


@pytest.mark.parametrize("policy", BUILDERS)
def test_same_key_same_endpoint_in_any_order_and_rebuild(policy: str) -> None:
    endpoints = [ep(f"10.0.0.{i}") for i in range(6)]
    build = BUILDERS[policy]
    first = owners(build(endpoints))
    # A new snapshot may list the endpoints in another order: keys stay where they were.
    assert owners(build(list(reversed(endpoints)))) == first
    assert owners(build(endpoints)) == first


@pytest.mark.parametrize("policy", BUILDERS)
def test_equal_weights_share_keys_evenly(policy: str) -> None:
    endpoints = [ep(f"10.0.0.{i}") for i in range(5)]
    counts = Counter(owners(BUILDERS[policy](endpoints)))
    # Maglev's table is near-perfect; what remains is the sampling of 20 000 keys.
    tolerance = 0.25 if policy == "ring_hash" else 0.06
    for host, n in counts.items():
        assert abs(n / len(KEYS) - 0.2) < 0.2 * tolerance, (host, counts)


@pytest.mark.parametrize("policy", BUILDERS)
def test_keys_follow_weights(policy: str) -> None:
    endpoints = [ep("a", 3), ep("b", 1), ep("c", 1)]
    counts = Counter(owners(BUILDERS[policy](endpoints)))
    tolerance = 0.06 if policy == "ring_hash" else 0.01
    assert abs(counts["a"] / len(KEYS) - 0.6) < tolerance, counts
    assert abs(counts["b"] / len(KEYS) - 0.2) < tolerance, counts


@pytest.mark.parametrize("policy", BUILDERS)
@pytest.mark.parametrize("count", [3, 10, 25])
def test_removing_one_of_n_moves_about_one_nth(policy: str, count: int) -> None:
    endpoints = [ep(f"10.0.1.{i}") for i in range(count)]
    build = BUILDERS[policy]
    before = owners(build(endpoints))
    gone = endpoints[count // 2]
    after = owners(build([e for e in endpoints if e is not gone]))
    moved = [i for i, (b, a) in enumerate(zip(before, after, strict=True)) if b != a]
    assert len(moved) / len(KEYS) <= 1.5 / count
    if policy == "ring_hash":
        # Ring hash moves exactly the keys of the removed endpoint.
        assert all(before[i] == gone.host for i in moved)
    else:
        # Maglev may shuffle a few others (the paper's small disruption), mostly not.
        assert sum(before[i] == gone.host for i in moved) >= 0.8 * len(moved)


@pytest.mark.parametrize("policy", BUILDERS)
@pytest.mark.parametrize("count", [3, 10, 25])
def test_adding_one_to_n_moves_about_one_nth(policy: str, count: int) -> None:
    endpoints = [ep(f"10.0.2.{i}") for i in range(count)]
    build = BUILDERS[policy]
    before = owners(build(endpoints))
    added = ep("10.0.2.200")
    after = owners(build([*endpoints, added]))
    moved = [i for i, (b, a) in enumerate(zip(before, after, strict=True)) if b != a]
    assert len(moved) / len(KEYS) <= 1.5 / (count + 1)
    assert sum(after[i] == added.host for i in moved) >= 0.8 * len(moved)


@pytest.mark.parametrize("policy", BUILDERS)
def test_without_key_picks_at_random_by_weight(policy: str) -> None:
    endpoints = [ep("a", 3), ep("b", 1)]
    balancer: Balancer
    if policy == "maglev":
        balancer = Maglev(endpoints, rng=random.Random(5))
    else:
        balancer = RingHash(endpoints, rng=random.Random(5))
    counts = Counter(p.host for p in (balancer.pick(None) for _ in range(8_000)) if p)
    assert abs(counts["a"] / 8_000 - 0.75) < 0.03, counts


def test_tables_are_reused_for_the_same_endpoint_set() -> None:
    tables = HashTables(limit=2)
    endpoints = [ep("a"), ep("b"), ep("c")]
    first = Maglev(endpoints, tables=tables)
    again = Maglev([ep("a"), ep("b"), ep("c")], tables=tables)
    assert again._table is first._table
    ring = RingHash(endpoints, tables=tables)
    assert RingHash(endpoints, tables=tables)._points is ring._points
    # A third set pushes the oldest out.
    Maglev(endpoints[:2], tables=tables)
    assert Maglev(endpoints, tables=tables)._table is not first._table
    # Different weights are a different set.
    assert Maglev([ep("a", 2), ep("b"), ep("c")], tables=tables)._table != first._table


def test_small_maglev_table_still_covers_every_endpoint() -> None:
    endpoints = [ep("a"), ep("b"), ep("c", 2)]
    table = Maglev(endpoints, table_size=101)._table
    assert len(table) == 101
    counts = Counter(table)
    assert set(counts) == {0, 1, 2}
    assert counts[2] > counts[0]
