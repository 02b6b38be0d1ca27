"""Token buckets of the snapshot's rate limits, driven by a fake clock."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from meshcore.model import Bootstrap, Snapshot
from meshcore.model.snapshot import RateLimitRule
from meshd.cluster.pool import PoolManager
from meshd.config import build_runtime
from meshd.errors import SnapshotRejected
from meshd.http.config import HttpListenerConfig
from meshd.policystats import PolicyStats
from meshd.ratelimit import ListenerRateLimiter, RateLimits, TokenBucket, retry_after
from meshd.tcp.config import TcpListenerConfig

pytestmark = pytest.mark.timeout(30)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def rule(name: str = "r", rps: float = 1.0, burst: int = 1, **fields: Any) -> RateLimitRule:
    return RateLimitRule.model_validate(
        {"name": name, "requests_per_second": rps, "burst": burst, **fields}
    )


def limiter(
    *rules: RateLimitRule, clock: FakeClock | None = None, max_sources: int = 10_000
) -> tuple[ListenerRateLimiter, PolicyStats, FakeClock]:
    clock = clock or FakeClock()
    stats = PolicyStats()
    built = RateLimits(stats, clock=clock, max_sources=max_sources).http("inbound", rules)
    assert built is not None
    return built, stats, clock


def get(
    lim: ListenerRateLimiter,
    path: bytes = b"/",
    *,
    source: bytes | None = None,
    method: bytes = b"GET",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> float | None:
    return lim.check(source=source, method=method, path=path, headers=headers or [])


def test_bucket_starts_full_and_refills_at_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    for _ in range(3):
        assert bucket.wait_s(0.0) == 0
        bucket.take()
    assert bucket.wait_s(0.0) == pytest.approx(0.5)
    assert bucket.wait_s(0.25) == pytest.approx(0.25)
    assert bucket.wait_s(0.5) == 0
    # Idle for long: never more than the burst.
    assert bucket.wait_s(100.0) == 0
    assert bucket.tokens == 3


def test_burst_then_refusals_with_the_wait() -> None:
    lim, stats, clock = limiter(rule(rps=2, burst=3))
    assert [get(lim) for _ in range(3)] == [None, None, None]
    assert get(lim) == pytest.approx(0.5)
    assert stats.value("meshd_rate_limited", "inbound", "r") == 1
    clock.t += 0.5
    assert get(lim) is None
    assert get(lim) == pytest.approx(0.5)
    assert stats.value("meshd_rate_limited", "inbound", "r") == 2


def test_refused_requests_spend_no_tokens() -> None:
    lim, _, clock = limiter(rule(rps=1, burst=1))
    assert get(lim) is None
    for _ in range(5):
        assert get(lim) is not None
    clock.t += 1.0
    assert get(lim) is None


@pytest.mark.parametrize(
    ("wait", "header"),
    [(0.001, b"1"), (0.5, b"1"), (1.0, b"1"), (1.0000000001, b"1"), (1.2, b"2"), (59.5, b"60")],
)
def test_retry_after_rounds_up_to_whole_seconds(wait: float, header: bytes) -> None:
    assert retry_after(wait) == header


def test_retry_after_of_a_slow_refill() -> None:
    lim, _, _ = limiter(rule(rps=0.1, burst=1))
    assert get(lim) is None
    wait = get(lim)
    assert wait is not None
    assert retry_after(wait) == b"10"


def test_per_source_buckets_are_isolated() -> None:
    lim, stats, _ = limiter(rule(rps=1, burst=2, per_source=True))
    a, b = b"spiffe://mesh.local/ns/default/svc/a", b"10.0.0.2"
    assert get(lim, source=a) is None
    assert get(lim, source=a) is None
    assert get(lim, source=a) is not None
    # Another source still has its whole burst.
    assert get(lim, source=b) is None
    assert get(lim, source=b) is None
    assert get(lim, source=b) is not None
    assert stats.value("meshd_rate_limited", "inbound", "r") == 2


def test_shared_bucket_when_not_per_source() -> None:
    lim, _, _ = limiter(rule(rps=1, burst=2))
    assert get(lim, source=b"a") is None
    assert get(lim, source=b"b") is None
    assert get(lim, source=b"c") is not None


def test_per_source_buckets_are_bounded_least_recently_seen_first() -> None:
    limits = RateLimits(PolicyStats(), clock=FakeClock(), max_sources=3)
    lim = limits.http("inbound", [rule(rps=1, burst=1, per_source=True)])
    assert lim is not None
    for source in (b"a", b"b", b"c"):
        assert get(lim, source=source) is None
    assert get(lim, source=b"a") is not None  # a is seen again: most recent now
    for i in range(1000):
        get(lim, source=b"x%d" % i)
    state = limits._states[("inbound", lim.rules[0])].value
    assert state.source_count == 3
    # a was forgotten among the flood: it starts with a full bucket again.
    assert get(lim, source=b"a") is None


def test_lru_keeps_a_recent_source() -> None:
    limits = RateLimits(PolicyStats(), clock=FakeClock(), max_sources=2)
    lim = limits.http("inbound", [rule(rps=1, burst=1, per_source=True)])
    assert lim is not None
    assert get(lim, source=b"a") is None
    assert get(lim, source=b"b") is None
    assert get(lim, source=b"a") is not None  # touches a
    assert get(lim, source=b"c") is None  # evicts b, the least recently seen
    assert get(lim, source=b"a") is not None  # a kept its (empty) bucket


def test_match_selects_the_requests_a_rule_counts() -> None:
    lim, stats, _ = limiter(
        rule(
            "uploads",
            burst=1,
            match={"path": {"prefix": "/upload"}, "methods": ["POST"]},
        )
    )
    assert get(lim, b"/upload/a", method=b"POST") is None
    assert get(lim, b"/upload/b", method=b"POST") is not None
    # Not matching: no limit at all.
    assert get(lim, b"/upload/a", method=b"GET") is None
    assert get(lim, b"/other", method=b"POST") is None
    assert stats.value("meshd_rate_limited", "inbound", "uploads") == 1


def test_match_on_headers_and_query() -> None:
    lim, _, _ = limiter(
        rule(
            "tenant",
            burst=1,
            match={"headers": [{"name": "x-tenant", "exact": "big"}], "query": [{"name": "q"}]},
        )
    )
    hdr = [(b"X-Tenant", b"big")]
    assert get(lim, b"/s?q=1", headers=hdr) is None
    assert get(lim, b"/s?q=2", headers=hdr) is not None
    assert get(lim, b"/s", headers=hdr) is None  # no q parameter
    assert get(lim, b"/s?q=1", headers=[(b"x-tenant", b"small")]) is None


def test_every_applying_rule_needs_a_token_all_or_nothing() -> None:
    lim, stats, clock = limiter(
        rule("all", rps=1, burst=3),
        rule("upload", rps=1, burst=1, match={"path": {"prefix": "/upload"}}),
    )
    assert get(lim, b"/upload") is None  # all: 2 left, upload: 0 left
    # Refused by "upload": "all" keeps its tokens (nothing is taken).
    assert get(lim, b"/upload") == pytest.approx(1.0)
    assert get(lim, b"/upload") == pytest.approx(1.0)
    assert stats.value("meshd_rate_limited", "inbound", "upload") == 2
    assert stats.value("meshd_rate_limited", "inbound", "all") == 0
    assert get(lim, b"/x") is None
    assert get(lim, b"/x") is None
    # Now both are empty: refused by both, counted under both, the longer wait returned.
    clock.t += 0.5
    wait = get(lim, b"/upload")
    assert wait == pytest.approx(0.5)
    assert stats.value("meshd_rate_limited", "inbound", "all") == 1
    assert stats.value("meshd_rate_limited", "inbound", "upload") == 3


def test_empty_match_applies_to_everything() -> None:
    lim, _, _ = limiter(rule(burst=1, match={}))
    assert get(lim, b"/a") is None
    assert get(lim, b"/b", method=b"DELETE") is not None


def test_no_rules_no_limiter() -> None:
    limits = RateLimits(PolicyStats())
    assert limits.http("inbound", []) is None
    assert limits.tcp("inbound", []) is None


def test_buckets_survive_a_new_snapshot_when_the_rule_is_unchanged() -> None:
    clock = FakeClock()
    limits = RateLimits(PolicyStats(), clock=clock)
    keep, change = rule("keep", burst=1), rule("change", burst=1, match={"path": {"exact": "/c"}})
    first = limits.http("inbound", [keep, change])
    assert first is not None
    assert get(first, b"/c") is None  # both buckets empty now
    changed = rule("change", burst=2, match={"path": {"exact": "/c"}})
    second = limits.http("inbound", [rule("keep", burst=1), changed])
    assert second is not None
    # "keep" is still empty; "change" is a new rule with a full bucket.
    assert get(second, b"/other") is not None
    clock.t += 1.0
    assert get(second, b"/c") is None
    assert get(second, b"/c") is not None  # keep empty again
    # Another listener has buckets of its own.
    other = limits.http("inbound-2", [keep])
    assert other is not None and get(other) is None


def test_state_of_rules_nobody_uses_is_dropped() -> None:
    limits = RateLimits(PolicyStats(), clock=FakeClock())
    lim = limits.http("inbound", [rule("a")])
    assert lim is not None and len(limits._states) == 1
    del lim
    gc.collect()
    assert len(limits._states) == 0


def test_tcp_counts_connections_with_rules_without_match() -> None:
    stats = PolicyStats()
    limits = RateLimits(stats, clock=FakeClock())
    lim = limits.tcp("db", [rule("conns", rps=1, burst=2, per_source=True)])
    assert lim is not None
    assert lim.check_connection(b"10.0.0.1") is None
    assert lim.check_connection(b"10.0.0.1") is None
    assert lim.check_connection(b"10.0.0.1") == pytest.approx(1.0)
    assert lim.check_connection(b"10.0.0.2") is None
    assert stats.value("meshd_rate_limited", "db", "conns") == 1


def test_tcp_refuses_a_rule_with_a_match() -> None:
    limits = RateLimits(PolicyStats())
    with pytest.raises(SnapshotRejected, match="rate limit by-path"):
        limits.tcp("db", [rule("ok"), rule("by-path", match={"path": {"prefix": "/x"}})])


def test_build_runtime_gives_limiters_to_inbound_listeners_only() -> None:
    snapshot = Snapshot.model_validate(
        {
            "version": 1,
            "listeners": [
                {"name": "in", "direction": "inbound", "address": "127.0.0.1:1"},
                {"name": "db", "direction": "inbound", "address": "127.0.0.1:2", "protocol": "tcp"},
                {"name": "out", "direction": "outbound", "address": "127.0.0.1:3", "cluster": "a"},
            ],
            "clusters": [{"name": "a", "service": "a"}],
            "rate_limits": [{"name": "r", "requests_per_second": 1, "burst": 1}],
        }
    )
    bootstrap = Bootstrap.model_validate(
        {"service": "api", "app": "127.0.0.1:9", "snapshot": {"file": "snapshot.yaml"}}
    )
    limits = RateLimits(PolicyStats())
    runtime = build_runtime(bootstrap, snapshot, PoolManager(), rate_limits=limits)
    inbound, tcp, outbound = (runtime.listeners[n] for n in ("in", "db", "out"))
    assert isinstance(inbound, HttpListenerConfig) and isinstance(outbound, HttpListenerConfig)
    assert isinstance(tcp, TcpListenerConfig)
    assert isinstance(inbound.rate_limiter, ListenerRateLimiter)
    assert isinstance(tcp.rate_limiter, ListenerRateLimiter)
    assert outbound.rate_limiter is None
    # A rule with a match can't be enforced on the tcp listener: the snapshot is refused.
    matched = snapshot.model_copy(
        update={"rate_limits": (rule("m", match={"path": {"prefix": "/x"}}),)}
    )
    with pytest.raises(SnapshotRejected, match="listener db: rate limit m"):
        build_runtime(bootstrap, matched, PoolManager(), rate_limits=limits)
