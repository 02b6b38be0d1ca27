"""Load balancer picks, tested with values and seeded generators."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import get_args

import pytest

from meshcore.model import Cluster, Endpoint
from meshd.cluster.lb import (
    Balancer,
    LbPolicy,
    LeastRequest,
    Maglev,
    PeakEwma,
    RingHash,
    RoundRobin,
    WeightedRandom,
    make_balancer,
)

POLICIES: tuple[LbPolicy, ...] = get_args(LbPolicy)


def ep(name: str, weight: int = 1) -> Endpoint:
    """An endpoint recognisable by its host name."""
    return Endpoint(host=name, port=8080, weight=weight)


def hosts(balancer: Balancer, count: int) -> list[str]:
    out = []
    for _ in range(count):
        picked = balancer.pick()
        assert picked is not None
        out.append(picked.host)
    return out


class CountingRandom(random.Random):
    """A seeded generator that counts draws of random()."""

    calls = 0

    def random(self) -> float:
        self.calls += 1
        return super().random()


def test_policies_match_the_model() -> None:
    assert set(POLICIES) == set(get_args(Cluster.model_fields["lb_policy"].annotation))
    assert set(POLICIES) == {
        "round_robin",
        "random",
        "least_request",
        "ewma",
        "ring_hash",
        "maglev",
    }


def test_round_robin_smooth_weighted_sequence() -> None:
    rr = RoundRobin([ep("a", 5), ep("b", 1), ep("c", 1)])
    # nginx's smooth weighted round robin, repeated each cycle of total weight 7.
    assert "".join(hosts(rr, 14)) == "aabacaa" * 2


def test_round_robin_weights_scaled_by_common_factor_give_same_sequence() -> None:
    small = RoundRobin([ep("a", 5), ep("b", 1), ep("c", 1)])
    large = RoundRobin([ep("a", 500), ep("b", 100), ep("c", 100)])
    assert hosts(small, 21) == hosts(large, 21)


def test_round_robin_shares_follow_weights() -> None:
    rr = RoundRobin([ep("a", 3), ep("b", 2), ep("c", 1)])
    counts = Counter(hosts(rr, 600))
    assert counts == {"a": 300, "b": 200, "c": 100}


def test_round_robin_equal_weights_rotate() -> None:
    rr = RoundRobin([ep("a", 2), ep("b", 2), ep("c", 2)])
    assert "".join(hosts(rr, 7)) == "abcabca"


def test_round_robin_ignores_load_reports() -> None:
    a, b = ep("a"), ep("b")
    rr = RoundRobin([a, b])
    rr.started(a)
    rr.started(a)
    rr.finished(b)
    assert hosts(rr, 4) == ["a", "b", "a", "b"]


def test_random_distribution_follows_weights() -> None:
    wr = WeightedRandom([ep("a", 6), ep("b", 3), ep("c", 1)], rng=random.Random(11))
    picks = 20_000
    counts = Counter(hosts(wr, picks))
    for host, share in (("a", 0.6), ("b", 0.3), ("c", 0.1)):
        assert abs(counts[host] / picks - share) < 0.02, counts


def test_random_equal_weights_is_uniform_and_seeded() -> None:
    endpoints = [ep("a"), ep("b"), ep("c"), ep("d")]
    first = hosts(WeightedRandom(endpoints, rng=random.Random(3)), 8_000)
    again = hosts(WeightedRandom(endpoints, rng=random.Random(3)), 8_000)
    assert first == again
    counts = Counter(first)
    assert set(counts) == {"a", "b", "c", "d"}
    assert all(abs(n / 8_000 - 0.25) < 0.02 for n in counts.values()), counts


def test_least_request_prefers_the_idle_endpoint() -> None:
    busy, idle = ep("busy"), ep("idle")
    lr = LeastRequest([busy, idle], rng=random.Random(1))
    lr.started(busy)
    # With two endpoints both are always candidates, so the idle one always wins.
    assert set(hosts(lr, 200)) == {"idle"}
    lr.finished(busy)
    assert set(hosts(lr, 200)) == {"busy", "idle"}


def test_least_request_counts_active_requests() -> None:
    a, b = ep("a"), ep("b")
    lr = LeastRequest([a, b], rng=random.Random(1))
    lr.started(a)
    lr.started(a)
    lr.started(b)
    assert (lr.active(a), lr.active(b)) == (2, 1)
    lr.finished(a)
    # An equal endpoint from elsewhere (e.g. a new snapshot) is the same endpoint.
    lr.finished(Endpoint(host="a", port=8080))
    lr.finished(a)  # more finishes than starts (a replaced balancer) clamp at zero
    assert (lr.active(a), lr.active(b)) == (0, 1)
    lr.started(ep("stranger"))  # not ours: ignored
    assert lr.active(ep("stranger")) == 0


def test_least_request_spreads_concurrent_load() -> None:
    endpoints = [ep(f"e{i}") for i in range(5)]
    lr = LeastRequest(endpoints, rng=random.Random(2))
    held = []
    for _ in range(50):
        picked = lr.pick()
        assert picked is not None
        lr.started(picked)
        held.append(picked)
    loads = [lr.active(e) for e in endpoints]
    assert sum(loads) == 50
    # P2C keeps the spread tight (uniform random choice would not).
    assert max(loads) - min(loads) <= 5, loads
    for picked in held:
        lr.finished(picked)
    assert [lr.active(e) for e in endpoints] == [0] * 5


def test_least_request_ties_are_random() -> None:
    endpoints = [ep("a"), ep("b"), ep("c")]
    counts = Counter(hosts(LeastRequest(endpoints, rng=random.Random(4)), 6_000))
    assert all(abs(n / 6_000 - 1 / 3) < 0.03 for n in counts.values()), counts


def test_least_request_weighted_without_concurrency_follows_weights() -> None:
    lr = LeastRequest([ep("a", 3), ep("b", 1)], rng=random.Random(5))
    counts = Counter(hosts(lr, 8_000))
    assert abs(counts["a"] / 8_000 - 0.75) < 0.03, counts


def test_least_request_weighted_compares_load_per_weight() -> None:
    heavy, light = ep("heavy", 4), ep("light", 1)
    lr = LeastRequest([heavy, light], rng=random.Random(6))
    for _ in range(3):
        lr.started(heavy)
    lr.started(light)
    # 3/4 < 1/1: when both are candidates, heavy wins; light only when drawn twice.
    counts = Counter(hosts(lr, 4_000))
    assert abs(counts["light"] / 4_000 - 0.04) < 0.02, counts


@pytest.mark.parametrize("policy", POLICIES)
def test_single_endpoint_fast_path(policy: LbPolicy) -> None:
    only = ep("only", 7)
    rng = CountingRandom(1)
    balancer = make_balancer(policy, [only], rng=rng)
    for _ in range(10):
        picked = balancer.pick()
        assert picked is only
        balancer.started(picked)
        balancer.finished(picked)
    assert rng.calls == 0


@pytest.mark.parametrize("policy", POLICIES)
def test_no_endpoints_picks_none(policy: LbPolicy) -> None:
    assert make_balancer(policy, []).pick() is None


BUILDERS: list[Callable[[Sequence[Endpoint]], Balancer]] = [
    RoundRobin,
    WeightedRandom,
    LeastRequest,
    PeakEwma,
    RingHash,
    Maglev,
]


@pytest.mark.parametrize("build", BUILDERS)
def test_classes_handle_zero_and_one_endpoint(
    build: Callable[[Sequence[Endpoint]], Balancer],
) -> None:
    assert build([]).pick() is None
    only = ep("only")
    assert build([only]).pick() is only


def test_make_balancer_builds_the_policy() -> None:
    endpoints = [ep("a"), ep("b")]
    assert isinstance(make_balancer("round_robin", endpoints), RoundRobin)
    assert isinstance(make_balancer("random", endpoints), WeightedRandom)
    assert isinstance(make_balancer("least_request", endpoints), LeastRequest)
    assert isinstance(make_balancer("ewma", endpoints), PeakEwma)
    assert isinstance(make_balancer("ring_hash", endpoints), RingHash)
    assert isinstance(make_balancer("maglev", endpoints), Maglev)
    with pytest.raises(ValueError, match="unknown load balancing policy"):
        make_balancer("nope", endpoints)  # type: ignore[arg-type]


def test_make_balancer_uses_the_given_rng() -> None:
    endpoints = [ep("a"), ep("b"), ep("c")]
    policies: tuple[LbPolicy, ...] = ("random", "least_request", "ewma", "ring_hash", "maglev")
    for policy in policies:
        first = hosts(make_balancer(policy, endpoints, rng=random.Random(9)), 50)
        again = hosts(make_balancer(policy, endpoints, rng=random.Random(9)), 50)
        assert first == again
