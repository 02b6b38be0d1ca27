"""The pick side of ClusterRuntime: hash keys, acquire/release accounting, state across
snapshots (build_runtime), and the admin view."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from meshcore.model import Bootstrap, Snapshot
from meshcore.model.snapshot import Cluster, Endpoint
from meshd.cluster.lb_load import FAILURE_PENALTY_S
from meshd.cluster.pool import PoolManager
from meshd.cluster.runtime import ClusterRuntime
from meshd.config import build_runtime
from meshd.errors import NoHealthyUpstream, UpstreamConnectError

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def server() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock
    sock.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def runtime(**fields: Any) -> ClusterRuntime:
    base: dict[str, Any] = {
        "name": "api",
        "service": "api",
        "endpoints": [{"host": "127.0.0.1", "port": 1}, {"host": "127.0.0.1", "port": 2}],
    }
    return ClusterRuntime(Cluster.model_validate({**base, **fields}), PoolManager())


def close(cluster: ClusterRuntime) -> None:
    for pool in cluster._pools.values():
        pool.close()


HEADERS = [
    (b"Host", b"api"),
    (b"X-User", b"alice"),
    (b"x-user", b"second"),
    (b"Cookie", b"theme=dark; session=s-42 ; other=1"),
    (b"cookie", b"session=later"),
]


def test_hash_key_from_header_cookie_or_source() -> None:
    by_header = runtime(lb_policy="ring_hash", hash_policy={"header": "X-User"})
    assert by_header.hash_key(HEADERS, b"10.0.0.9") == b"alice"
    assert by_header.hash_key([(b"host", b"api")], b"10.0.0.9") is None
    by_cookie = runtime(lb_policy="maglev", hash_policy={"cookie": "session"})
    assert by_cookie.hash_key(HEADERS, b"10.0.0.9") == b"s-42"
    assert by_cookie.hash_key([(b"cookie", b'session="q"')], b"") == b"q"
    assert by_cookie.hash_key([(b"cookie", b"sessionx=1; session")], b"") is None
    by_source = runtime(lb_policy="ring_hash", hash_policy={"source_ip": True})
    assert by_source.hash_key(HEADERS, b"10.0.0.9") == b"10.0.0.9"
    assert runtime().hash_key(HEADERS, b"10.0.0.9") is None


async def test_acquire_counts_in_flight_and_release_feeds_latency(server: socket.socket) -> None:
    port = int(server.getsockname()[1])
    cluster = runtime(endpoints=[{"host": "127.0.0.1", "port": port}], lb_policy="ewma")
    endpoint, conn = await cluster.acquire()
    assert cluster.selector.endpoint_state(endpoint)["in_flight"] == 1
    cluster.release(endpoint, conn, reusable=False)
    state = cluster.selector.endpoint_state(endpoint)
    assert state["in_flight"] == 0
    assert isinstance(state["ewma_ms"], float)
    cluster.report(endpoint, 200, 0.25)
    assert cluster.selector.endpoint_state(endpoint)["ewma_ms"] == pytest.approx(250.0, abs=1)
    close(cluster)


async def test_failed_connect_is_a_slow_sample_and_not_in_flight() -> None:
    cluster = runtime(endpoints=[{"host": "127.0.0.1", "port": closed_port()}], lb_policy="ewma")
    with pytest.raises(UpstreamConnectError) as failed:
        await cluster.acquire()
    endpoint = cluster.model.endpoints[0]
    # The request path reports the endpoint the error names (status 0: no response).
    assert failed.value.endpoint == endpoint
    cluster.report(endpoint, 0, 0.001)
    state = cluster.selector.endpoint_state(endpoint)
    assert state["in_flight"] == 0
    assert isinstance(state["ewma_ms"], float)
    assert state["ewma_ms"] >= FAILURE_PENALTY_S * 1000 * 0.99


async def test_acquire_avoids_excluded_and_fails_when_nothing_is_usable(
    server: socket.socket,
) -> None:
    port = int(server.getsockname()[1])
    cluster = runtime(
        endpoints=[{"host": "127.0.0.1", "port": port}, {"host": "127.0.0.1", "port": 1}],
        panic_threshold_percent=0,
    )
    tried = Endpoint(host="127.0.0.1", port=1)
    for _ in range(4):
        endpoint, conn = await cluster.acquire(exclude=[tried])
        assert endpoint.port == port
        cluster.release(endpoint, conn, reusable=True)
    cluster.selector.set_unavailable(frozenset({("127.0.0.1", port), ("127.0.0.1", 1)}))
    with pytest.raises(NoHealthyUpstream):
        await cluster.acquire()
    close(cluster)


def bootstrap(zone: str | None = None) -> Bootstrap:
    return Bootstrap.model_validate(
        {"service": "web", "app": "127.0.0.1:9", "snapshot": {"file": "s.yaml"}, "zone": zone}
    )


def snapshot(version: int, endpoints: list[dict[str, Any]]) -> Snapshot:
    cluster = {"name": "api", "service": "api", "endpoints": endpoints, "lb_policy": "ewma"}
    return Snapshot.model_validate({"version": version, "clusters": [cluster]})


def test_build_runtime_keeps_every_tier_and_carries_state() -> None:
    pools = PoolManager()
    first = build_runtime(
        bootstrap("z1"),
        snapshot(
            1,
            [
                {"host": "10.0.0.1", "port": 80, "zone": "z1"},
                {"host": "10.0.0.2", "port": 80, "priority": 1},
            ],
        ),
        pools,
    )
    api = first.clusters["api"]
    assert api.selector.zone == "z1"
    assert [e.priority for e in api.selector.endpoints] == [0, 1]
    primary = api.model.endpoints[0]
    api.selector.observe(primary, 0.04)
    api.selector.started(primary)
    api.selector.set_unavailable(frozenset({("10.0.0.1", 80)}))
    second = build_runtime(
        bootstrap("z1"),
        snapshot(2, [{"host": "10.0.0.1", "port": 80}, {"host": "10.0.0.3", "port": 80}]),
        pools,
        previous=first.clusters,
    )
    carried = second.clusters["api"].selector
    assert carried.endpoint_state(primary)["in_flight"] == 1
    assert carried.endpoint_state(primary)["ewma_ms"] == pytest.approx(40.0, abs=0.5)
    assert carried.unavailable == frozenset({("10.0.0.1", 80)})
    assert carried.pick() == Endpoint(host="10.0.0.3", port=80)


def test_describe_shows_priority_zone_ewma_and_in_flight() -> None:
    cluster = runtime(
        endpoints=[
            {"host": "127.0.0.1", "port": 1, "zone": "z1"},
            {"host": "127.0.0.1", "port": 2, "priority": 1},
        ]
    )
    cluster.selector.observe(cluster.model.endpoints[0], 0.012)
    info = cluster.describe()
    assert info["tiers"] == [
        {"priority": 0, "endpoints": 1, "healthy": 1, "load_percent": 100.0, "panic": False},
        {"priority": 1, "endpoints": 1, "healthy": 1, "load_percent": 0.0, "panic": False},
    ]
    endpoints = info["endpoints"]
    assert isinstance(endpoints, list)
    first, second = endpoints
    assert (first["priority"], first["zone"], first["in_flight"]) == (0, "z1", 0)
    assert first["ewma_ms"] == pytest.approx(12.0, abs=0.5)
    assert first["available"] is True
    assert (second["priority"], second["ewma_ms"]) == (1, None)


async def test_untimed_release_gives_no_latency_sample(server: socket.socket) -> None:
    port = int(server.getsockname()[1])
    cluster = runtime(endpoints=[{"host": "127.0.0.1", "port": port}], lb_policy="ewma")
    endpoint, conn = await cluster.acquire(fresh=True)
    cluster.release(endpoint, conn, reusable=False, timed=False)  # as the TCP proxy does
    assert cluster.selector.endpoint_state(endpoint) == {
        "priority": 0,
        "zone": None,
        "available": True,
        "in_flight": 0,
        "ewma_ms": None,
    }
    close(cluster)
