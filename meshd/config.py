"""Build the live configuration of every listener from a validated snapshot."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from meshcore.model import LOCAL_APP_CLUSTER, Bootstrap, Cluster, Endpoint, Snapshot
from meshcore.routing import CompiledRouteTable, catch_all
from meshd.access.guard import AuthzContext
from meshd.cluster.pool import PoolManager
from meshd.cluster.runtime import ClusterRuntime
from meshd.errors import SnapshotRejected
from meshd.http.config import HttpListenerConfig
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


#: Route fields accepted in snapshots but not acted on yet (``redirect`` is).
_ROUTE_FIELDS = ("retries", "fault", "request_headers", "response_headers", "rewrite", "mirror")
_CLUSTER_FIELDS = ("limits", "outlier_detection", "health_check")


def unenforced_fields(snapshot: Snapshot) -> list[str]:
    """Names of the fields set in ``snapshot`` that this meshd accepts but doesn't enforce yet."""
    found: set[str] = set()
    for table in snapshot.route_tables:
        for route in table.routes:
            found.update(f"route.{f}" for f in _ROUTE_FIELDS if getattr(route, f) is not None)
            if route.match.query:
                found.add("route.match.query")
    for cluster in snapshot.clusters:
        found.update(f"cluster.{f}" for f in _CLUSTER_FIELDS if getattr(cluster, f) is not None)
    if snapshot.rate_limits:
        found.add("rate_limits")
    return sorted(found)


def build_runtime(
    bootstrap: Bootstrap,
    snapshot: Snapshot,
    pools: PoolManager,
    authz: AuthzContext | None = None,
    previous: Mapping[str, ClusterRuntime] | None = None,
) -> RuntimeConfig:
    """Compile ``snapshot`` for this sidecar; raises :class:`SnapshotRejected`.

    ``authz`` keeps what the inbound guards share across snapshots (JWKS caches, counters,
    log limiters); the sidecar passes its own. None: a fresh one (its counts go nowhere).
    ``previous``: the running configuration's clusters, whose balancing state (latency
    estimates, in-flight counts, unavailable endpoints) carries over to clusters of the same
    name. Every priority tier is kept: the clusters fail over at run time, on health.
    """
    models = [*snapshot.clusters, local_app_cluster(bootstrap)]
    before = previous or {}
    clusters = {
        c.name: ClusterRuntime(c, pools, zone=bootstrap.zone, previous=before.get(c.name))
        for c in models
    }
    listeners: dict[str, ListenerConfig] = {}
    policy = snapshot.inbound_policy
    if policy is not None and authz is None:
        authz = AuthzContext(Stats())
    for lst in snapshot.listeners:
        guard = None
        if policy is not None and authz is not None and lst.direction == "inbound":
            guard = authz.guard(policy, listener=lst.name, service=bootstrap.service)
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
        )
    return RuntimeConfig(bootstrap, snapshot, clusters, listeners)
