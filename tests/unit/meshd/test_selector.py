"""Endpoint selection at run time: priority spill-over, panic, locality, exclusion, state
carried across snapshots. Values in, picks out (seeded generators, fake clock)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from meshcore.model import Cluster, Endpoint
from meshd.cluster.priority import TierLoad, plan, tier_loads
from meshd.cluster.selector import EndpointSelector

pytestmark = pytest.mark.timeout(60)


def ep(name: str, priority: int = 0, zone: str | None = None, weight: int = 1) -> Endpoint:
    return Endpoint(host=name, port=80, priority=priority, zone=zone, weight=weight)


def model(endpoints: list[Endpoint], **fields: Any) -> Cluster:
    if fields.get("lb_policy") in ("ring_hash", "maglev"):
        fields.setdefault("hash_policy", {"header": "x-user"})
    return Cluster(name="api", service="api", endpoints=tuple(endpoints), **fields)


def zoned(**zones: int) -> list[Endpoint]:
    """``count`` endpoints per zone, named zone + index."""
    return [ep(f"{zone}{i}", zone=zone) for zone, count in zones.items() for i in range(count)]


def down(*names: str) -> frozenset[tuple[str, int]]:
    return frozenset((n, 80) for n in names)


def counts(selector: EndpointSelector, n: int, **kwargs: Any) -> Counter[str]:
    out: Counter[str] = Counter()
    for _ in range(n):
        picked = selector.pick(**kwargs)
        assert picked is not None
        out[picked.host] += 1
    return out


def loads(tiers: list[TierLoad]) -> list[tuple[int, float, bool]]:
    return [(t.priority, round(t.load_percent, 2), t.panic) for t in tiers]


# -- priority load (numbers as Envoy's docs give them) ------------------------------------------


@pytest.mark.parametrize(
    ("tiers", "expected"),
    [
        # All healthy: everything to P0.
        ([(0, 4, 4), (1, 4, 4)], [100.0, 0.0]),
        # 75% healthy x 1.4 = 105 -> still 100.
        ([(0, 4, 3), (1, 4, 4)], [100.0, 0.0]),
        # 50% x 1.4 = 70: 30 spills to P1.
        ([(0, 4, 2), (1, 4, 4)], [70.0, 30.0]),
        # 40% -> 56, P1 takes the rest.
        ([(0, 5, 2), (1, 5, 5)], [56.0, 44.0]),
        # Three tiers: 42 + 28 + 30.
        ([(0, 10, 3), (1, 10, 2), (2, 10, 10)], [42.0, 28.0, 30.0]),
        # P0 gone: P1 takes all.
        ([(0, 2, 0), (1, 2, 2)], [0.0, 100.0]),
    ],
)
def test_priority_spill_over(tiers: list[tuple[int, int, int]], expected: list[float]) -> None:
    result = tier_loads(tiers, 50.0)
    assert [round(t.load_percent, 2) for t in result] == expected
    assert not any(t.panic for t in result)


def test_availability_below_100_is_scaled_up() -> None:
    # 60% x 1.4 = 84 and 20% x 1.4 = 28: 112 > 100, no scaling; P1 gets 16.
    assert loads(tier_loads([(0, 5, 3), (1, 5, 1)], 0.0)) == [(0, 84.0, False), (1, 16.0, False)]
    # 20% -> 28 and 40% -> 56: total 84 < 100, scaled to 33.33 / 66.67; panic disabled (0).
    assert loads(tier_loads([(0, 5, 1), (1, 5, 2)], 0.0)) == [
        (0, 33.33, False),
        (1, 66.67, False),
    ]


def test_panic_per_tier_when_total_below_100() -> None:
    # 25% -> 35 and 60% -> 84 = 119: enough overall, no panic even though P0 < 50%.
    assert loads(tier_loads([(0, 4, 1), (1, 5, 3)], 50.0)) == [(0, 35.0, False), (1, 65.0, False)]
    # 25% -> 35 and 40% -> 56 = 91 < 100: P0 (25% < 50%) panics, P1 (40%) too: all panic,
    # so the tiers share by endpoint count (4 and 5).
    assert loads(tier_loads([(0, 4, 1), (1, 5, 2)], 50.0)) == [(0, 44.44, True), (1, 55.56, True)]
    # Only P0 below a 30% threshold panics.
    assert loads(tier_loads([(0, 4, 1), (1, 5, 2)], 30.0)) == [
        (0, 38.46, True),
        (1, 61.54, False),
    ]


def test_nothing_healthy_sends_all_to_the_first_tier_in_panic() -> None:
    assert loads(tier_loads([(0, 2, 0), (1, 2, 0)], 50.0)) == [(0, 50.0, True), (1, 50.0, True)]
    # Panic disabled: the first tier gets everything and has nothing to offer.
    assert loads(tier_loads([(0, 2, 0), (1, 2, 0)], 0.0)) == [(0, 100.0, False), (1, 0.0, False)]


# -- the selector -------------------------------------------------------------------------------


def test_selector_fails_over_to_the_next_tier_and_back() -> None:
    cluster = model([ep("a"), ep("b"), ep("c"), ep("d"), ep("x", 1), ep("y", 1)])
    sel = EndpointSelector(cluster, rng=random.Random(1))
    assert set(counts(sel, 400)) == {"a", "b", "c", "d"}
    sel.set_unavailable(down("a", "b"))  # 50% -> 70 / 30
    got = counts(sel, 10_000)
    assert set(got) == {"c", "d", "x", "y"}
    assert abs((got["x"] + got["y"]) / 10_000 - 0.30) < 0.02, got
    sel.set_unavailable(down("a", "b", "c", "d"))
    assert set(counts(sel, 200)) == {"x", "y"}
    sel.set_unavailable(frozenset())
    assert set(counts(sel, 400)) == {"a", "b", "c", "d"}
    assert [t.load_percent for t in sel.tiers] == [100.0, 0.0]


def test_only_failover_tiers_present_use_the_lowest() -> None:
    sel = EndpointSelector(model([ep("x", 1), ep("z", 2)]), rng=random.Random(2))
    assert counts(sel, 50) == {"x": 50}


def test_panic_uses_unhealthy_endpoints_of_the_tier() -> None:
    cluster = model([ep("a"), ep("b"), ep("c"), ep("d")])
    sel = EndpointSelector(cluster, rng=random.Random(3))
    sel.set_unavailable(down("a", "b", "c"))  # 25% < 50%: panic
    assert set(counts(sel, 400)) == {"a", "b", "c", "d"}
    assert sel.tiers[0].panic
    no_panic = EndpointSelector(model([*cluster.endpoints], panic_threshold_percent=0))
    no_panic.set_unavailable(down("a", "b", "c"))
    assert set(counts(no_panic, 100)) == {"d"}
    no_panic.set_unavailable(down("a", "b", "c", "d"))
    assert no_panic.pick() is None


def test_locality_prefers_the_callers_zone() -> None:
    endpoints = zoned(a=4, b=4)
    cluster = model(endpoints, locality={"min_healthy_percent": 70})
    sel = EndpointSelector(cluster, zone="a", rng=random.Random(4))
    assert {h[0] for h in counts(sel, 400)} == {"a"}
    sel.set_unavailable(down("a0"))  # 75% >= 70%: still all local
    assert {h[0] for h in counts(sel, 400)} == {"a"}
    sel.set_unavailable(down("a0", "a1"))  # 50%: keep 50/70 local, the rest spills over
    assert [round(g.percent, 2) for g in sel.groups] == [71.43, 28.57]
    got = counts(sel, 10_000)
    local = sum(n for h, n in got.items() if h.startswith("a"))
    assert abs(local / 10_000 - 50 / 70) < 0.02, got
    assert set(got) == {"a2", "a3", "b0", "b1", "b2", "b3"}
    sel.set_unavailable(down("a0", "a1", "a2", "a3"))
    assert {h[0] for h in counts(sel, 200)} == {"b"}


def test_locality_needs_a_zone_and_local_endpoints() -> None:
    endpoints = [ep("a0", zone="a"), ep("b0", zone="b")]
    cluster = model(endpoints, locality={"min_healthy_percent": 50})
    assert set(counts(EndpointSelector(cluster, rng=random.Random(5)), 200)) == {"a0", "b0"}
    other = EndpointSelector(cluster, zone="c", rng=random.Random(5))
    assert set(counts(other, 200)) == {"a0", "b0"}
    without_policy = EndpointSelector(model(endpoints), zone="a", rng=random.Random(5))
    assert set(counts(without_policy, 200)) == {"a0", "b0"}


def test_locality_within_the_tier_in_use() -> None:
    endpoints = [ep("a0", zone="a"), ep("b0", zone="b"), ep("a1", 1, zone="a"), ep("b1", 1, "b")]
    cluster = model(endpoints, locality={"min_healthy_percent": 100})
    sel = EndpointSelector(cluster, zone="a", rng=random.Random(6))
    assert counts(sel, 50) == {"a0": 50}
    sel.set_unavailable(down("a0", "b0"))
    assert counts(sel, 50) == {"a1": 50}


def test_plan_groups_name_priority_and_locality() -> None:
    endpoints = [ep("a0", zone="a"), ep("a1", zone="a"), ep("b0", zone="b"), ep("x", 1)]
    tiers, groups = plan(
        endpoints, down("a0"), panic_threshold_percent=50, zone="a", min_healthy_percent=100
    )
    assert loads(tiers) == [(0, 93.33, False), (1, 6.67, False)]
    assert [(g.priority, round(g.percent, 2), g.local) for g in groups] == [
        (0, 46.67, True),
        (0, 46.67, False),
        (1, 6.67, None),
    ]


def test_exclude_prefers_endpoints_not_tried() -> None:
    a, b, c = ep("a"), ep("b"), ep("c")
    sel = EndpointSelector(model([a, b, c]), rng=random.Random(7))
    assert set(counts(sel, 300, exclude=[a])) == {"b", "c"}
    assert counts(sel, 100, exclude=[a, b]) == {"c": 100}
    # Everything tried: one of them again rather than nothing.
    assert set(counts(sel, 100, exclude=[a, b, c])) <= {"a", "b", "c"}
    # An equal endpoint of another snapshot counts as the same one.
    assert counts(sel, 50, exclude=[Endpoint(host="a", port=80), b]) == {"c": 50}


def test_exclude_reaches_the_next_tier_when_the_tier_is_exhausted() -> None:
    a, x = ep("a"), ep("x", 1)
    sel = EndpointSelector(model([a, x]), rng=random.Random(8))
    assert counts(sel, 20) == {"a": 20}
    assert counts(sel, 20, exclude=[a]) == {"x": 20}
    sel.set_unavailable(down("x"))
    assert counts(sel, 20, exclude=[a]) == {"a": 20}


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_hash_exclude_moves_the_key_elsewhere(policy: str) -> None:
    endpoints = [ep(f"e{i}") for i in range(5)]
    sel = EndpointSelector(model(endpoints, lb_policy=policy), rng=random.Random(9))
    first = sel.pick(b"user-1")
    assert first is not None
    assert {sel.pick(b"user-1") for _ in range(20)} == {first}
    other = sel.pick(b"user-1", exclude=[first])
    assert other is not None and other != first
    assert sel.pick(b"user-1", exclude=[first]) == other  # deterministic


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_hash_keys_stick_and_ejection_moves_about_one_nth(policy: str) -> None:
    count = 10
    endpoints = [ep(f"10.1.0.{i}") for i in range(count)]
    sel = EndpointSelector(model(endpoints, lb_policy=policy), rng=random.Random(10))
    keys = [f"session-{i}".encode() for i in range(5_000)]

    def owners() -> list[str]:
        return [p.host for p in map(sel.pick, keys) if p is not None]

    before = owners()
    assert owners() == before
    sel.set_unavailable(down("10.1.0.3"))
    after = owners()
    moved = sum(b != a for b, a in zip(before, after, strict=True))
    assert moved / len(keys) <= 1.5 / count
    assert "10.1.0.3" not in after
    sel.set_unavailable(frozenset())
    assert owners() == before


def test_hash_keys_stick_across_groups() -> None:
    endpoints = zoned(a=2, b=2)
    cluster = model(endpoints, lb_policy="ring_hash", locality={"min_healthy_percent": 100})
    sel = EndpointSelector(cluster, zone="a", rng=random.Random(11))
    sel.set_unavailable(down("a0"))  # two groups: 50% local, 50% other zone
    for i in range(50):
        key = f"k{i}".encode()
        assert len({sel.pick(key) for _ in range(5)}) == 1
    zones = Counter(p.host[0] for p in (sel.pick(f"k{i}".encode()) for i in range(2000)) if p)
    assert abs(zones["a"] / 2000 - 0.5) < 0.05, zones


def test_no_key_or_other_policy_ignores_the_hash() -> None:
    endpoints = [ep("a"), ep("b")]
    ring = EndpointSelector(model(endpoints, lb_policy="ring_hash"), rng=random.Random(12))
    assert set(counts(ring, 200)) == {"a", "b"}
    rr = EndpointSelector(model(endpoints), rng=random.Random(12))
    assert [p.host for p in (rr.pick(b"same") for _ in range(4)) if p] == ["a", "b", "a", "b"]


class Clock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def test_state_survives_a_snapshot_update_for_endpoints_that_stay() -> None:
    clock = Clock()
    a, b, c = ep("a"), ep("b"), ep("c")
    old = EndpointSelector(model([a, b], lb_policy="ewma"), rng=random.Random(13), clock=clock)
    old.observe(a, 0.2)
    old.started(b)
    old.set_unavailable(down("b"))
    new = EndpointSelector(
        model([Endpoint(host="a", port=80), Endpoint(host="b", port=80), c], lb_policy="ewma"),
        previous=old,
    )
    assert new.book.clock is clock
    assert new.endpoint_state(a)["ewma_ms"] == 200.0
    assert new.endpoint_state(b)["in_flight"] == 1
    assert new.endpoint_state(b)["available"] is False
    assert new.unavailable == down("b")
    assert new.endpoint_state(c) == {
        "priority": 0,
        "zone": None,
        "available": True,
        "in_flight": 0,
        "ewma_ms": None,
    }
    # The request that started before the update finishes on the old selector.
    old.finished(b)
    assert new.endpoint_state(b)["in_flight"] == 0
    # Endpoints that left don't come back; the unavailable set keeps only current ones.
    third = EndpointSelector(model([c]), previous=new)
    assert third.unavailable == frozenset()
    assert third.book.find(a) is None


def test_finished_latency_fills_in_when_nothing_was_reported() -> None:
    clock = Clock()
    a = ep("a")
    sel = EndpointSelector(model([a, ep("b")], lb_policy="ewma"), clock=clock)
    sel.started(a)
    clock.t += 0.05
    sel.finished(a, 0.05)
    assert sel.endpoint_state(a)["ewma_ms"] == 50.0
    sel.started(a)
    clock.t += 1.0
    sel.observe(a, 0.3)  # the request path reported this try
    sel.finished(a, 1.0)  # so the coarser measure is not counted again
    assert sel.endpoint_state(a)["ewma_ms"] == 300.0
    assert sel.endpoint_state(a)["in_flight"] == 0


def test_ewma_through_the_selector_prefers_the_fast_endpoint() -> None:
    clock = Clock()
    fast, slow = ep("fast"), ep("slow")
    sel = EndpointSelector(
        model([fast, slow], lb_policy="ewma"), rng=random.Random(14), clock=clock
    )
    sel.observe(fast, 0.005)
    sel.observe(slow, 0.25)
    assert counts(sel, 100) == {"fast": 100}


def test_describe_reports_tiers() -> None:
    sel = EndpointSelector(model([ep("a"), ep("b"), ep("x", 1)]), zone="z1")
    sel.set_unavailable(down("a"))
    info = sel.describe()
    assert info["zone"] == "z1"
    assert info["panic_threshold_percent"] == 50.0
    assert info["tiers"] == [
        {"priority": 0, "endpoints": 2, "healthy": 1, "load_percent": 70.0, "panic": False},
        {"priority": 1, "endpoints": 1, "healthy": 1, "load_percent": 30.0, "panic": False},
    ]


def test_empty_cluster_picks_none() -> None:
    sel = EndpointSelector(model([]))
    assert sel.pick() is None
    assert sel.pick(b"k", exclude=[ep("a")]) is None
    assert sel.describe()["tiers"] == []


def test_same_unavailable_set_keeps_the_balancers() -> None:
    sel = EndpointSelector(model([ep("a"), ep("b"), ep("c"), ep("d")]))
    sel.set_unavailable(down("d"))
    assert [p.host for p in (sel.pick(), sel.pick()) if p] == ["a", "b"]
    sel.set_unavailable(down("d"))  # nothing changed: the rotation goes on
    assert [p.host for p in (sel.pick(), sel.pick()) if p] == ["c", "a"]
    sel.set_unavailable(frozenset())  # a change: new balancers
    assert [p.host for p in (sel.pick(), sel.pick()) if p] == ["a", "b"]


def test_removed_endpoints_are_never_picked_not_even_in_panic_or_on_retry() -> None:
    a, b, c = ep("a"), ep("b"), ep("c")
    sel = EndpointSelector(model([a, b, c]), rng=random.Random(9))
    # A newer snapshot left b out (deregistered); this older snapshot's selector lists it still.
    sel.set_unavailable(frozenset(), removed=down("b"))
    assert set(counts(sel, 100)) == {"a", "c"}
    # a and c ejected: panic over the endpoints the cluster still has, never over b.
    sel.set_unavailable(down("a", "c"), removed=down("b"))
    assert set(counts(sel, 100)) == {"a", "c"}
    # A retry after a: c, else a again; never the removed b, healthy as it looks here.
    sel.set_unavailable(down("c"), removed=down("b"))
    assert counts(sel, 50, exclude=[a]) == {"a": 50}
    # All removed: nothing to pick.
    sel.set_unavailable(frozenset(), removed=down("a", "b", "c"))
    assert sel.pick() is None
    assert sel.pick(exclude=[a]) is None
