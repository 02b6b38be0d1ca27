"""Upstream connection pools over real loopback sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import trio

from meshcore.model.snapshot import Cluster, ClusterTls, Endpoint
from meshd.cluster.pool import EndpointPool, PoolLimits, PoolManager
from meshd.cluster.runtime import ClusterRuntime
from meshd.errors import PoolOverflow, UpstreamConnectError


@pytest.fixture
def server() -> Iterator[socket.socket]:
    """A listening socket whose accepted connections the test can close."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock
    sock.close()


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


async def test_released_connection_is_reused(server: socket.socket) -> None:
    pool = EndpointPool("127.0.0.1", _port(server), PoolLimits())
    first = await pool.acquire()
    assert not first.reused
    assert (pool.active, pool.idle, pool.created) == (1, 0, 1)
    pool.release(first, reusable=True)
    assert (pool.active, pool.idle) == (0, 1)
    second = await pool.acquire()
    assert second is first
    assert second.reused
    assert pool.created == 1
    pool.release(second, reusable=False)
    assert (pool.active, pool.idle) == (0, 0)
    pool.close()


async def test_limit_counts_idle_and_active(server: socket.socket) -> None:
    pool = EndpointPool("127.0.0.1", _port(server), PoolLimits(max_connections=2))
    a = await pool.acquire()
    b = await pool.acquire()
    with pytest.raises(PoolOverflow):
        await pool.acquire()
    pool.release(a, reusable=True)
    # The idle one is handed out again rather than counting against a new connection.
    c = await pool.acquire()
    assert c is a
    for conn in (b, c):
        pool.release(conn, reusable=False)
    pool.close()


async def test_idle_beyond_max_idle_are_closed(server: socket.socket) -> None:
    pool = EndpointPool("127.0.0.1", _port(server), PoolLimits(max_idle=1))
    a = await pool.acquire()
    b = await pool.acquire()
    pool.release(a, reusable=True)
    pool.release(b, reusable=True)
    assert pool.idle == 1
    assert b.stream.sock.fileno() == -1  # closed, not pooled
    pool.close()


async def test_expire_closes_connections_idle_too_long(server: socket.socket) -> None:
    pool = EndpointPool("127.0.0.1", _port(server), PoolLimits(idle_timeout_s=5.0))
    conn = await pool.acquire()
    pool.release(conn, reusable=True)
    assert pool.expire(time.monotonic()) == 0
    assert pool.expire(time.monotonic() + 10.0) == 1
    assert pool.idle == 0
    assert conn.stream.sock.fileno() == -1
    pool.close()


async def test_connection_closed_by_peer_is_not_reused(server: socket.socket) -> None:
    pool = EndpointPool("127.0.0.1", _port(server), PoolLimits())
    conn = await pool.acquire()
    peer, _ = server.accept()
    pool.release(conn, reusable=True)
    peer.close()
    # Past the window in which a recently used connection is trusted without a check.
    await trio.sleep(0.15)
    fresh = await pool.acquire()
    assert fresh is not conn
    assert not fresh.reused
    assert pool.created == 2
    pool.release(fresh, reusable=False)
    pool.close()


async def test_refused_connection_is_a_typed_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = _port(probe)
    pool = EndpointPool("127.0.0.1", port, PoolLimits())
    with pytest.raises(UpstreamConnectError):
        await pool.acquire()
    assert pool.active == 0


async def test_manager_shares_pools_and_closes_them(server: socket.socket) -> None:
    manager = PoolManager()
    limits = PoolLimits(idle_timeout_s=0.1)
    pool = manager.pool("127.0.0.1", _port(server), limits)
    assert manager.pool("127.0.0.1", _port(server), limits) is pool
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        conn = await pool.acquire()
        pool.release(conn, reusable=True)
        # The manager's sweep expires the idle connection without anyone asking.
        with trio.fail_after(5):
            while pool.idle:
                await trio.sleep(0.05)
        kept = await pool.acquire()
        pool.release(kept, reusable=True)
        nursery.cancel_scope.cancel()
    assert pool.closed
    assert pool.idle == 0


def test_cluster_pools_expect_each_endpoints_identity() -> None:
    # A failover tier of another service presents that service's SPIFFE ID.
    cluster = Cluster(
        name="api",
        service="api",
        tls=ClusterTls(spiffe_id="spiffe://t/ns/default/svc/api"),
        endpoints=(
            Endpoint(host="127.0.0.1", port=1001),
            Endpoint(
                host="127.0.0.1", port=1002, priority=1, spiffe_id="spiffe://t/ns/default/svc/dr"
            ),
        ),
    )
    manager = PoolManager()
    ClusterRuntime(cluster, manager)
    ClusterRuntime(cluster.model_copy(update={"tls": None}), manager)  # no tls: plain pools
    ids = {(p.port, p.tls_id) for p in manager._pools.values()}
    assert ids == {
        (1001, "spiffe://t/ns/default/svc/api"),
        (1002, "spiffe://t/ns/default/svc/dr"),
        (1001, None),
        (1002, None),
    }
