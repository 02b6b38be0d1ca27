"""Build the live configuration of every listener from a validated snapshot."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from meshcore.model import LOCAL_APP_CLUSTER, Bootstrap, Cluster, Endpoint, Snapshot
from meshcore.routing import CompiledRouteTable, catch_all
from meshd.access.guard import AuthzContext
from meshd.cluster.pool import PoolManager
from meshd.cluster.runtime import ClusterRuntime
from meshd.cluster.state import ClusterStates
from meshd.errors import SnapshotRejected
from meshd.http.config import HttpListenerConfig
from meshd.ratelimit import RateLimits
from meshd.stats import Stats
from meshd.tcp.config import TcpListenerConfig

ListenerConfig = HttpListenerConfig | TcpListenerConfig


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """A snapshot turned into the objects the proxy runs, built before it is swapped in."""

    bootstrap: Bootstrap
    snapshot: Snapshot
    clusters: dict[str, ClusterRuntime]
    listeners: dict[str, ListenerConfig]


def local_app_cluster(bootstrap: Bootstrap) -> Cluster:
    """The cluster of the sidecar's own app (inbound traffic ends there)."""
    # Built without validation: the name is reserved so that snapshots can't define it.
    return Cluster.model_construct(
        name=LOCAL_APP_CLUSTER,
        service=bootstrap.service,
        endpoints=(Endpoint(host=bootstrap.app.host, port=bootstrap.app.port),),
        lb_policy="round_robin",
        connect_timeout_s=2.0,
        max_connections=4096,
        max_idle_per_endpoint=256,
        idle_timeout_s=60.0,
    )


def build_runtime(
    bootstrap: Bootstrap,
    snapshot: Snapshot,
    pools: PoolManager,
    authz: AuthzContext | None = None,
    rate_limits: RateLimits | None = None,
    *,
    states: ClusterStates | None = None,
    previous: Mapping[str, ClusterRuntime] | None = None,
) -> RuntimeConfig:
    """Compile ``snapshot`` for this sidecar; raises :class:`SnapshotRejected`.

    ``authz`` keeps what the inbound guards share across snapshots (JWKS caches, counters,
    log limiters); the sidecar passes its own. None: a fresh one (its counts go nowhere).
    ``rate_limits`` likewise keeps the token buckets of the snapshot's ``rate_limits``, which
    apply to inbound listeners (requests on http, new connections on tcp).
    ``states`` keeps the clusters' health (breakers, retry budgets, outlier detection, health
    checks) across snapshots; the caller configures them with ``states.apply`` once the
    runtime is in service. None: each cluster gets a private state.
    ``previous``: the running configuration's clusters, whose balancing state (latency
    estimates, in-flight counts, unavailable endpoints) carries over to clusters of the same
    name. Every priority tier is kept: the clusters fail over at run time, on health.
    """
    models = [*snapshot.clusters, local_app_cluster(bootstrap)]
    before = previous or {}
    clusters = {
        c.name: ClusterRuntime(
            c,
            pools,
            None if states is None else states.get(c.name),
            zone=bootstrap.zone,
            previous=before.get(c.name),
        )
        for c in models
    }
    listeners: dict[str, ListenerConfig] = {}
    policy = snapshot.inbound_policy
    if policy is not None and authz is None:
        authz = AuthzContext(Stats())
    if rate_limits is None:
        rate_limits = RateLimits(Stats().policy)
    for lst in snapshot.listeners:
        guard = None
        inbound = lst.direction == "inbound"
        if policy is not None and authz is not None and inbound:
            guard = authz.guard(policy, listener=lst.name, service=bootstrap.service)
        # Rate limits are the destination's: they apply to inbound listeners only.
        limits = snapshot.rate_limits if inbound else ()
        if lst.protocol == "tcp":
            cluster_name = lst.target_cluster
            assert cluster_name is not None  # tcp listeners never have a route table
            listeners[lst.name] = TcpListenerConfig(
                name=lst.name,
                direction=lst.direction,
                local_service=bootstrap.service,
                cluster=clusters[cluster_name],
                idle_timeout_s=lst.idle_timeout_s,
                guard=guard,
                rate_limiter=rate_limits.tcp(lst.name, limits),
            )
            continue
        if lst.route_table is not None:
            table = snapshot.route_table(lst.route_table)
            if table is None:
                raise SnapshotRejected(f"listener {lst.name}: no route table {lst.route_table}")
            routes = CompiledRouteTable(table)
        else:
            target = lst.target_cluster
            assert target is not None
            routes = catch_all(target)
        listeners[lst.name] = HttpListenerConfig(
            name=lst.name,
            direction=lst.direction,
            local_service=bootstrap.service,
            routes=routes,
            clusters=clusters,
            idle_timeout_s=lst.idle_timeout_s,
            headers_timeout_s=lst.request_headers_timeout_s,
            max_head_bytes=lst.max_request_headers_kb * 1024,
            max_headers=lst.max_request_header_count,
            max_response_head_bytes=lst.max_response_headers_kb * 1024,
            max_response_headers=lst.max_response_header_count,
            max_requests_per_connection=lst.max_requests_per_connection,
            version=snapshot.version,
            guard=guard,
            rate_limiter=rate_limits.http(lst.name, limits),
            escaped_slashes=lst.path_with_escaped_slashes,
        )
    return RuntimeConfig(bootstrap, snapshot, clusters, listeners)
