"""Cluster health kept across snapshots, and the runtime avoiding what it marks unavailable."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from meshcore.model.policy import HealthCheck
from meshcore.model.snapshot import Cluster, Endpoint
from meshd.cluster.pool import PoolManager
from meshd.cluster.runtime import ClusterRuntime
from meshd.cluster.state import ClusterStates, EndpointHealth
from meshd.errors import NoHealthyUpstream, PoolOverflow, UpstreamConnectError
from meshd.policystats import PolicyStats

pytestmark = pytest.mark.timeout(30)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def listeners() -> Iterator[list[int]]:
    """Three listening sockets' ports (connections are accepted by the kernel's backlog)."""
    socks = []
    for _ in range(3):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        socks.append(sock)
    yield [int(s.getsockname()[1]) for s in socks]
    for sock in socks:
        sock.close()


@pytest.fixture
async def pools() -> AsyncIterator[PoolManager]:
    """Pools whose idle connections are closed after the test."""
    manager = PoolManager()
    yield manager
    for pool in manager:
        pool.close()


def _cluster(ports: list[int], **fields: object) -> Cluster:
    return Cluster.model_validate(
        {
            "name": "api",
            "service": "api",
            "endpoints": [{"host": "127.0.0.1", "port": p} for p in ports],
            **fields,
        }
    )


OUTLIERS = {
    "consecutive_5xx": 2,
    "base_ejection_s": 5,
    "interval_s": 60,
    "max_ejection_percent": 100,
}


def _healthy(health: EndpointHealth) -> bool:
    # A call, so the type checker doesn't narrow the attribute between the records.
    return health.healthy


def test_endpoint_health_thresholds() -> None:
    check = HealthCheck(unhealthy_threshold=2, healthy_threshold=3)
    health = EndpointHealth()
    assert health.healthy is True  # new endpoints start healthy
    assert not health.record(False, check)
    assert not health.record(True, check)  # the failure run ends
    assert not health.record(False, check)
    assert health.record(False, check)
    assert _healthy(health) is False
    assert not health.record(True, check)
    assert not health.record(True, check)
    assert health.record(True, check)
    assert _healthy(health) and health.checks == 7


def test_state_survives_a_new_snapshot_and_is_dropped_with_its_cluster() -> None:
    clock = FakeClock()
    stats = PolicyStats()
    states = ClusterStates(stats, clock)
    model = _cluster([1001, 1002], outlier_detection=OUTLIERS, health_check={"interval_s": 1})
    states.apply([model])
    state = states.get("api")
    state.report(("127.0.0.1", 1001), 503)
    state.report(("127.0.0.1", 1001), 503)
    assert state.unavailable == {("127.0.0.1", 1001)}
    assert stats.value("meshd_outlier_ejections", "api", "consecutive_5xx") == 1
    assert stats.value("meshd_outlier_ejected_endpoints", "api") == 1
    for _ in range(3):
        state.record_check(("127.0.0.1", 1002), False)
    assert state.unavailable == {("127.0.0.1", 1001), ("127.0.0.1", 1002)}
    assert stats.value("meshd_health_check_unhealthy_endpoints", "api") == 1
    assert stats.value("meshd_health_checks", "api", "failure") == 3
    # A new snapshot with one more endpoint: the state stays, the newcomer is available.
    states.apply([_cluster([1001, 1002, 1003], outlier_detection=OUTLIERS, health_check={})])
    assert states.get("api") is state
    assert state.unavailable == {("127.0.0.1", 1001), ("127.0.0.1", 1002)}
    # The ejection ends on time.
    clock.now += 5
    assert state.due == 105.0
    state.tick()
    assert state.unavailable == {("127.0.0.1", 1002)}
    # The cluster goes away: its state and gauges too.
    states.apply([])
    assert states.get("api") is not state
    assert stats.value("meshd_health_check_unhealthy_endpoints", "api") == 0


async def test_runtime_avoids_unavailable_endpoints_and_uses_all_when_none_is_left(
    listeners: list[int], pools: PoolManager
) -> None:
    clock = FakeClock()
    states = ClusterStates(PolicyStats(), clock)
    model = _cluster(listeners, outlier_detection=OUTLIERS)
    runtime = ClusterRuntime(model, pools, states.get("api"))
    states.apply([model])

    async def picks(n: int) -> set[int]:
        seen = set()
        for _ in range(n):
            endpoint, conn = await runtime.acquire()
            seen.add(endpoint.port)
            runtime.release(endpoint, conn, reusable=True)
        return seen

    assert await picks(6) == set(listeners)
    bad = model.endpoints[0]
    runtime.report(bad, 500, 0.01)
    runtime.report(bad, 502, 0.01)
    assert await picks(6) == set(listeners[1:])
    # Every endpoint ejected: a cluster that sends somewhere beats one that sends nowhere.
    for endpoint in model.endpoints[1:]:
        runtime.report(endpoint, 500, 0.01)
        runtime.report(endpoint, 500, 0.01)
    assert await picks(6) == set(listeners)
    described = runtime.describe()
    endpoints = described["endpoints"]
    assert isinstance(endpoints, list)
    assert endpoints[0]["outlier"]["ejected"] is True
    assert endpoints[0]["available"] is False
    # Time passes: all return.
    clock.now += 5
    assert await picks(6) == set(listeners)
    assert runtime.state.unavailable == frozenset()


async def test_a_replaced_runtime_never_retries_on_an_endpoint_the_new_snapshot_left_out(
    listeners: list[int], pools: PoolManager
) -> None:
    # The chaos test's case: b's app died, b was ejected, then the registry dropped b (a new
    # snapshot without it, so b's ejection is forgotten). Requests still running on the old
    # snapshot's runtime retry a try that timed out on a (ejected in turn): a again (panic),
    # never b, which that runtime would otherwise see as the one healthy endpoint.
    clock = FakeClock()
    states = ClusterStates(PolicyStats(), clock)
    a, b = ("127.0.0.1", listeners[0]), ("127.0.0.1", listeners[1])
    old_model = _cluster(listeners[:2], outlier_detection=OUTLIERS)
    old = ClusterRuntime(old_model, pools, states.get("api"))
    states.apply([old_model])
    state = states.get("api")
    state.report(b, 502)
    state.report(b, 502)
    assert state.unavailable == {b}
    new_model = _cluster(listeners[:1], outlier_detection=OUTLIERS)
    new = ClusterRuntime(new_model, pools, states.get("api"), previous=old)
    states.apply([new_model])
    assert state.unavailable == frozenset()  # b's state went with it

    async def picks(runtime: ClusterRuntime, n: int, exclude: list[Endpoint]) -> set[int]:
        seen = set()
        for _ in range(n):
            endpoint, conn = await runtime.acquire(exclude=exclude)
            seen.add(endpoint.port)
            runtime.release(endpoint, conn, reusable=True)
        return seen

    assert await picks(old, 6, []) == {a[1]}
    state.report(a, 0)
    state.report(a, 0)
    assert state.unavailable == {a}
    tried = [old_model.endpoints[0]]
    assert await picks(old, 6, tried) == {a[1]}
    assert await picks(new, 6, tried) == {a[1]}
    # b back in a newer snapshot (registered again): the old runtime may use it again.
    states.apply([old_model])
    assert await picks(old, 6, tried) == {b[1]}
    # Neither a nor b in the newest snapshot: the old runtime has no endpoint left.
    states.apply([_cluster(listeners[2:], outlier_detection=OUTLIERS)])
    with pytest.raises(NoHealthyUpstream):
        await old.acquire(exclude=tried)


async def test_a_failed_connect_names_its_endpoint_for_the_report(
    listeners: list[int], pools: PoolManager
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = int(sock.getsockname()[1])
    model = _cluster(
        [dead, listeners[0]],
        outlier_detection={**OUTLIERS, "consecutive_local_origin_failures": 2},
    )
    runtime = ClusterRuntime(model, pools)
    failed: list[object] = []
    for _ in range(10):
        try:
            endpoint, conn = await runtime.acquire()
        except UpstreamConnectError as exc:
            failed.append(exc.endpoint)
            if isinstance(exc.endpoint, Endpoint):
                runtime.report(exc.endpoint, 0, 0.001)  # as the request path does
            continue
        runtime.release(endpoint, conn, reusable=True)
    assert failed == [model.endpoints[0]] * 2
    assert runtime.state.unavailable == {("127.0.0.1", dead)}


async def test_cluster_wide_max_connections_and_pending(
    listeners: list[int], pools: PoolManager
) -> None:
    limits = {"max_connections": 2, "max_pending_requests": 0}
    runtime = ClusterRuntime(_cluster(listeners, limits=limits), pools)
    first = await runtime.acquire()
    second = await runtime.acquire()
    assert first[0] != second[0]  # two endpoints, one connection each
    # A third connection (any endpoint) would exceed the cluster's two: refused.
    with pytest.raises(PoolOverflow):
        await runtime.acquire()
    runtime.release(*first, reusable=True)
    # One idle now: reused if the pick lands on it, else closed to make room.
    third = await runtime.acquire()
    assert runtime.describe()["circuit_breaker"]["connections"] == 2  # type: ignore[index]
    runtime.release(*second, reusable=False)
    runtime.release(*third, reusable=False)


def test_budget_exhaustion_is_counted_and_admit_feeds_it() -> None:
    model = _cluster([1001], retry_budget={"percent": 50, "min_retries_per_second": 0})
    runtime = ClusterRuntime(model, PoolManager())
    for _ in range(4):
        runtime.admit()
    assert [runtime.begin_retry() for _ in range(3)] == [True, True, False]
    assert runtime.state.stats.value("meshd_retry_budget_exhausted", "api") == 1
    budget = runtime.describe()["retry_budget"]
    assert isinstance(budget, dict) and budget["remaining"] == 0
    for _ in range(4):
        runtime.done()
    assert runtime.state.breaker.requests == 0


def test_max_retries_refusal_leaves_the_budget_untouched() -> None:
    model = _cluster(
        [1001],
        limits={"max_retries": 1},
        retry_budget={"percent": 0, "min_retries_per_second": 0.2, "ttl_s": 10},
    )
    runtime = ClusterRuntime(model, PoolManager())
    runtime.admit()
    assert runtime.begin_retry()  # the budget's floor: two retries in the window
    assert not runtime.begin_retry()  # max_retries: one in flight
    assert runtime.state.stats.value("meshd_upstream_overflow", "api", "max_retries") == 1
    runtime.end_retry()
    assert runtime.begin_retry()  # the budget still had its second retry
    runtime.end_retry()
    assert not runtime.begin_retry()
    assert runtime.state.stats.value("meshd_retry_budget_exhausted", "api") == 1
    assert runtime.state.breaker.retries == 0
