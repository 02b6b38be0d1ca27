"""The sidecar's tap sampler: filters, the per-tap rate, the buffer bound, expiry."""

from __future__ import annotations

import pytest

from meshcore.api.report import ActiveTap
from meshcore.api.telemetry import TapFilter
from meshd.context import ExchangeRecord
from meshd.telemetry.tap import TapSampler, matches

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def rec(path: bytes = b"/api/x", code: int = 200, method: str = "GET") -> ExchangeRecord:
    return ExchangeRecord(
        direction="outbound",
        source="web",
        destination="api",
        route="r",
        method=method,
        target=path,
        code=code,
        start=0.0,
        seconds=0.002,
        endpoint="127.0.0.1:1",
        peer_identity="",
        traceparent_in=None,
        traceparent_out=b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01",
        retries=0,
        error="",
    )


#: What the request path passes to ``wants`` for :func:`rec`'s exchange.
FIELDS = ("web", "api", "GET", 200, b"/api/x")


def tap(tap_id: str = "t1", rate: int = 10, remaining: float = 60, **flt: object) -> ActiveTap:
    return ActiveTap(
        id=tap_id,
        filter=TapFilter.model_validate(flt),
        max_events_per_s=rate,
        remaining_s=remaining,
    )


def test_filters() -> None:
    assert matches(TapFilter(), rec())
    assert matches(TapFilter(source="web", destination="api", method="get"), rec())
    assert not matches(TapFilter(destination="db"), rec())
    assert matches(TapFilter(path_prefix="/api/"), rec())
    assert not matches(TapFilter(path_prefix="/admin"), rec())
    assert matches(TapFilter(status=503), rec(code=503))
    assert not matches(TapFilter(status=503), rec())


def test_rate_bound_per_tap_and_events() -> None:
    clock = Clock()
    sampler = TapSampler(clock=clock, wall=lambda: 123.0)
    assert sampler.take_events() == []
    sampler.set_taps([tap(rate=3)])
    assert sampler.active
    for _ in range(10):
        sampler.observe(rec())
    clock.t += 1.0
    for _ in range(10):
        sampler.observe(rec())
    events = sampler.take_events()
    # One token at the start, then three per second.
    assert len(events) == 4
    assert sampler.dropped == 16
    # Without a token, a request is not even looked at.
    assert not sampler.wants(*FIELDS)
    clock.t += 1.0
    assert sampler.wants(*FIELDS)
    e = events[0]
    assert (e.tap_id, e.path, e.status, e.trace_id) == ("t1", "/api/x", 200, "a" * 32)
    assert e.latency_ms == 2.0 and e.ts == 123.0 and e.direction == "outbound"
    assert sampler.take_events() == []


def test_buffer_bound_and_expiry() -> None:
    clock = Clock()
    sampler = TapSampler(clock=clock, max_buffer=5)
    sampler.set_taps([tap(rate=100, remaining=2)])
    for _ in range(100):
        clock.t += 0.01
        sampler.observe(rec())
    assert len(sampler.take_events()) == 5
    clock.t += 5
    assert not sampler.active
    sampler.observe(rec())
    assert sampler.take_events() == []


def test_wants_only_what_a_tap_with_a_token_matches() -> None:
    clock = Clock()
    sampler = TapSampler(clock=clock)
    sampler.set_taps([tap(rate=2, destination="api", path_prefix="/api/")])
    # A token, but the filter says no: no record is made for these.
    assert not sampler.wants("web", "db", "GET", 200, b"/api/x")
    assert not sampler.wants("web", "api", "GET", 200, b"/admin")
    assert sampler.wants(*FIELDS)
    sampler.observe(rec())
    # The only token is taken: quiet, whatever comes, until the next one (half a second).
    assert not sampler.wants(*FIELDS)
    clock.t += 0.49
    assert not sampler.wants(*FIELDS)
    clock.t += 0.02
    assert sampler.wants(*FIELDS)
    assert [e.tap_id for e in sampler.take_events()] == ["t1"]


def test_a_full_buffer_quiets_until_the_events_are_taken() -> None:
    clock = Clock()
    sampler = TapSampler(clock=clock, max_buffer=2)
    sampler.set_taps([tap(rate=100)])
    for _ in range(2):
        clock.t += 0.1
        assert sampler.wants(*FIELDS)
        sampler.observe(rec())
    clock.t += 0.1
    assert not sampler.wants(*FIELDS)
    assert len(sampler.take_events()) == 2
    assert sampler.wants(*FIELDS)


def test_several_taps_each_keep_their_matches() -> None:
    clock = Clock()
    sampler = TapSampler(clock=clock)
    sampler.set_taps([tap("a", status=503), tap("b", method="GET")])
    assert sampler.wants(*FIELDS)  # "b" matches
    sampler.observe(rec())
    clock.t += 1.0
    sampler.observe(rec(code=503))
    assert sorted(e.tap_id for e in sampler.take_events()) == ["a", "b", "b"]
    # A filter change applies to the tap's next request.
    sampler.set_taps([tap("a", status=200)])
    assert sampler.wants(*FIELDS)
