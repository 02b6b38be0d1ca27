"""Peak-EWMA latency estimates and the EWMA balancer, with a fake clock and seeded draws."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from meshcore.model import Endpoint
from meshd.cluster.lb_ewma import PeakEwma
from meshd.cluster.lb_load import DEFAULT_RTT_S, FAILURE_PENALTY_S, LoadBook

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def ep(name: str, weight: int = 1) -> Endpoint:
    return Endpoint(host=name, port=8080, weight=weight)


def picks(balancer: PeakEwma, count: int) -> Counter[str]:
    out: Counter[str] = Counter()
    for _ in range(count):
        picked = balancer.pick()
        assert picked is not None
        out[picked.host] += 1
    return out


def test_unknown_endpoint_costs_the_default_latency() -> None:
    clock = Clock()
    book = LoadBook([ep("a")], clock=clock)
    load = book.get(ep("a"))
    assert book.latency(load) == DEFAULT_RTT_S
    assert book.cost(load, 1, clock()) == DEFAULT_RTT_S
    load.in_flight = 2
    assert book.cost(load, 2, clock()) == pytest.approx(DEFAULT_RTT_S * 3 / 2)


def test_peak_replaces_and_lower_samples_average_by_elapsed_time() -> None:
    clock = Clock()
    book = LoadBook(clock=clock, decay_s=10.0)
    a = ep("a")
    book.observe(a, 0.1)
    assert book.get(a).rtt_s == pytest.approx(0.1)
    book.observe(a, 0.5)  # a slowdown shows at once
    assert book.get(a).rtt_s == pytest.approx(0.5)
    clock.t += 10.0
    book.observe(a, 0.1)  # 10 s later the old estimate weighs 1/e
    expected = 0.5 * math.exp(-1) + 0.1 * (1 - math.exp(-1))
    assert book.get(a).rtt_s == pytest.approx(expected)
    book.observe(a, 0.0)  # no time passed: a lower sample doesn't move it
    assert book.get(a).rtt_s == pytest.approx(expected)


def test_estimate_decays_towards_zero_while_idle() -> None:
    clock = Clock()
    book = LoadBook(clock=clock, decay_s=10.0)
    a = ep("a")
    book.observe(a, 0.2)
    clock.t += 20.0
    assert book.latency(book.get(a)) == pytest.approx(0.2 * math.exp(-2))


def test_failed_try_costs_at_least_the_penalty() -> None:
    book = LoadBook(clock=Clock())
    book.observe(ep("a"), 0.001, failed=True)
    assert book.get(ep("a")).rtt_s == FAILURE_PENALTY_S


def test_in_flight_counts_clamp_and_adopt_shares_state() -> None:
    book = LoadBook([ep("a"), ep("b")], clock=Clock())
    book.started(ep("a"))
    book.started(ep("b"))
    book.observe(ep("a"), 0.05)
    book.finished(ep("b"))
    book.finished(ep("b"))  # clamps at zero
    book.finished(ep("zzz"))  # unknown: ignored
    adopted = book.adopt([ep("a"), ep("c")])
    assert adopted.get(ep("a")) is book.get(ep("a"))
    assert adopted.get(ep("a")).in_flight == 1
    assert adopted.get(ep("a")).rtt_s == pytest.approx(0.05)
    assert adopted.find(ep("b")) is None
    assert adopted.get(ep("c")).in_flight == 0
    # A request finishing on the old book is seen by the new one.
    book.finished(ep("a"))
    assert adopted.get(ep("a")).in_flight == 0


def test_ewma_sends_to_the_faster_endpoint() -> None:
    clock = Clock()
    fast, slow = ep("fast"), ep("slow")
    book = LoadBook([fast, slow], clock=clock)
    balancer = PeakEwma([fast, slow], rng=random.Random(1), book=book)
    book.observe(fast, 0.002)
    book.observe(slow, 0.2)
    # Two endpoints: both are always the candidates, the cheaper one wins.
    assert picks(balancer, 200) == {"fast": 200}
    assert balancer.cost(slow) == pytest.approx(0.2)


def test_ewma_load_raises_cost() -> None:
    clock = Clock()
    fast, slow = ep("fast"), ep("slow")
    book = LoadBook([fast, slow], clock=clock)
    balancer = PeakEwma([fast, slow], rng=random.Random(2), book=book)
    book.observe(fast, 0.01)
    book.observe(slow, 0.03)
    for _ in range(3):
        balancer.started(fast)  # 0.01 x 4 > 0.03 x 1
    assert picks(balancer, 50) == {"slow": 50}
    balancer.finished(fast)
    balancer.finished(fast)  # 0.01 x 2 < 0.03
    assert picks(balancer, 50) == {"fast": 50}


def test_ewma_new_endpoint_gets_tried() -> None:
    clock = Clock()
    old, new = ep("old"), ep("new")
    book = LoadBook([old], clock=clock)
    book.observe(old, 0.1)
    balancer = PeakEwma([old, new], rng=random.Random(3), book=book)
    assert picks(balancer, 10) == {"new": 10}
    # Once it reports a slow answer, it loses its head start.
    balancer.finished(new, 0.5)
    assert picks(balancer, 10) == {"old": 10}


def test_ewma_slow_endpoint_is_retried_after_decay() -> None:
    clock = Clock()
    fast, slow = ep("fast"), ep("slow")
    book = LoadBook([fast, slow], clock=clock, decay_s=10.0)
    balancer = PeakEwma([fast, slow], rng=random.Random(4), book=book)
    book.observe(slow, 0.5)
    book.observe(fast, 0.01)
    clock.t += 5.0
    book.observe(fast, 0.01)  # fast stays busy and fresh; slow is idle
    assert picks(balancer, 5) == {"fast": 5}
    clock.t += 60.0
    book.observe(fast, 0.01)  # still answering in 10 ms, while 0.5 x e^-6.5 < 0.01
    assert picks(balancer, 5) == {"slow": 5}


def test_ewma_weight_divides_cost() -> None:
    clock = Clock()
    heavy, light = ep("heavy", 4), ep("light", 1)
    book = LoadBook([heavy, light], clock=clock)
    balancer = PeakEwma([heavy, light], rng=random.Random(5), book=book)
    book.observe(heavy, 0.03)
    book.observe(light, 0.01)
    assert picks(balancer, 20) == {"heavy": 20}  # 0.03 / 4 < 0.01


def test_ewma_ties_spread_over_many_endpoints() -> None:
    endpoints = [ep(f"e{i}") for i in range(4)]
    balancer = PeakEwma(endpoints, rng=random.Random(6), book=LoadBook(endpoints, clock=Clock()))
    counts = picks(balancer, 4_000)
    assert all(abs(n / 4_000 - 0.25) < 0.03 for n in counts.values()), counts
