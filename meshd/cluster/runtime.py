"""A cluster as the proxy uses it: pick an endpoint, check out a pooled connection."""

from __future__ import annotations

from meshcore.model import Cluster, Endpoint
from meshd.cluster.lb import Balancer, make_balancer
from meshd.cluster.pool import EndpointPool, PoolLimits, PoolManager, UpstreamConnection
from meshd.errors import NoHealthyUpstream


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

    async def acquire(self, *, fresh: bool = False) -> tuple[Endpoint, UpstreamConnection]:
        """An endpoint and a connection to it; raises an :class:`UpstreamError`."""
        endpoint = self.balancer.pick()
        if endpoint is None:
            raise NoHealthyUpstream("no_healthy_upstream", f"cluster {self.name} is empty")
        conn = await self._pools[id(endpoint)].acquire(fresh=fresh)
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
