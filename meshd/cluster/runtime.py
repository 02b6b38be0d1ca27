"""A cluster as the proxy uses it: pick an endpoint, check out a pooled connection.

The request path talks to a cluster only through this API, in this order::

    cluster.admit()                      # once per request; may raise PoolOverflow
    try:
        key = cluster.hash_key(headers, peer_ip)
        for each try:
            if it is a retry and not cluster.begin_retry(): stop retrying
            endpoint, conn = await cluster.acquire(hash_key=key, exclude=tried)
            ...exchange...
            cluster.report(endpoint, status, latency_s)   # status 0: no response
            cluster.release(endpoint, conn, reusable=...)
            if it was a retry: cluster.end_retry()
    finally:
        cluster.done()
"""

from __future__ import annotations

from collections.abc import Collection

from meshcore.model import Cluster, Endpoint
from meshd.cluster.lb import Balancer, make_balancer
from meshd.cluster.pool import EndpointPool, PoolLimits, PoolManager, UpstreamConnection
from meshd.errors import NoHealthyUpstream, UpstreamError


class ClusterRuntime:
    """The live side of one snapshot's :class:`~meshcore.model.Cluster`."""

    __slots__ = ("_pools", "_tracks_requests", "balancer", "model", "name", "service")

    def __init__(self, model: Cluster, pools: PoolManager) -> None:
        self.model = model
        self.name = model.name
        self.service = model.service
        self.balancer: Balancer = make_balancer(model.lb_policy, model.endpoints)
        self._tracks_requests = model.lb_policy == "least_request"
        limits = PoolLimits(
            max_connections=model.max_connections,
            max_idle=model.max_idle_per_endpoint,
            idle_timeout_s=model.idle_timeout_s,
            connect_timeout_s=model.connect_timeout_s,
        )
        tls_id = model.tls.spiffe_id if model.tls is not None else None
        # Keyed by identity: hashing a pydantic model on every request would cost more.
        # TLS is per endpoint: a plain endpoint beside sidecars (``plaintext``) gets a plain
        # pool; every other endpoint of a TLS cluster is reached over mTLS.
        self._pools: dict[int, EndpointPool] = {
            id(ep): pools.pool(
                ep.host,
                ep.port,
                limits,
                tls_id=(ep.spiffe_id or tls_id) if tls_id and not ep.plaintext else None,
            )
            for ep in model.endpoints
        }

    def admit(self) -> None:
        """A request starts using this cluster; raises :class:`PoolOverflow` over a limit."""

    def done(self) -> None:
        """A request :meth:`admit` let in has ended, however it ended."""

    def begin_retry(self) -> bool:
        """Whether a retry may start now (retry budget, ``max_retries``); True counts it."""
        return True

    def end_retry(self) -> None:
        """A retry :meth:`begin_retry` allowed has ended."""

    def hash_key(self, headers: list[tuple[bytes, bytes]], peer_ip: bytes) -> bytes | None:
        """What ``ring_hash``/``maglev`` hash for this request (None: no hash policy, or the
        request lacks the header or cookie)."""
        return None

    def report(self, endpoint: Endpoint, status: int, latency_s: float) -> None:
        """The outcome of one try on ``endpoint``: the response status, or 0 when no response
        came (connect failure, reset, timeout). Feeds outlier detection and EWMA."""

    async def acquire(
        self,
        *,
        hash_key: bytes | None = None,
        exclude: Collection[Endpoint] = (),
        fresh: bool = False,
    ) -> tuple[Endpoint, UpstreamConnection]:
        """An endpoint (not one of ``exclude`` when another is available) and a connection to
        it; raises an :class:`UpstreamError`."""
        endpoint = self.balancer.pick()
        if endpoint is None:
            raise NoHealthyUpstream("no_healthy_upstream", f"cluster {self.name} is empty")
        try:
            conn = await self._pools[id(endpoint)].acquire(fresh=fresh)
        except UpstreamError as exc:
            exc.endpoint = endpoint  # the request path reports it and retries elsewhere
            raise
        if self._tracks_requests:
            self.balancer.started(endpoint)
        return endpoint, conn

    def release(self, endpoint: Endpoint, conn: UpstreamConnection, *, reusable: bool) -> None:
        """Give ``conn`` back after a request on ``endpoint``."""
        if self._tracks_requests:
            self.balancer.finished(endpoint)
        conn.pool.release(conn, reusable=reusable)

    def describe(self) -> dict[str, object]:
        """JSON-able state for the admin API."""
        return {
            "name": self.name,
            "service": self.service,
            "lb_policy": self.model.lb_policy,
            "endpoints": [
                {
                    "address": f"{ep.host}:{ep.port}",
                    "weight": ep.weight,
                    "tls": self._pools[id(ep)].tls_id is not None,
                    "active": self._pools[id(ep)].active,
                    "idle": self._pools[id(ep)].idle,
                    "created": self._pools[id(ep)].created,
                }
                for ep in self.model.endpoints
            ],
        }
