"""Clusters: a service (or one subset of it) with its endpoints and connection settings.

Endpoints come from the discovery view, filtered by the subset's tags and meta. The
service's ``ServiceResolver`` failover targets are appended as tiers of priority 1, 2, ...
(used in order when every endpoint of a lower tier is unhealthy). Settings: ``lb_policy``,
limits, outlier detection and health check from ``ServiceDefaults``; ``connect_timeout_s``
from the resolver, else ``ServiceDefaults``, else the mesh. ``tls`` (originate mTLS, expect
the service's SPIFFE ID) when every endpoint is a sidecar of the service itself and the
service's mTLS mode (``ServiceDefaults``, else the mesh) isn't ``disabled``.
"""

from __future__ import annotations

from collections.abc import Hashable

from controld.compiler.inputs import ClusterRef, Inputs, cluster_name, spiffe_id
from controld.discovery.view import ServiceEndpoint
from meshcore.model.snapshot import Cluster, ClusterTls, Endpoint

__all__ = ["build_cluster", "cluster_key", "cluster_tls", "failover_refs", "select_endpoints"]


def failover_refs(inputs: Inputs, ref: ClusterRef) -> tuple[ClusterRef, ...]:
    """The failover tiers of the cluster ``ref``, in order (the cluster itself left out).

    A target naming no service is the same service; a target naming no subset is all of the
    target service's instances.
    """
    service = ref[0]
    resolver = inputs.resolver(service)
    if resolver is None or not resolver.failover:
        return ()
    tiers: list[ClusterRef] = []
    for target in resolver.failover:
        tier = (target.service or service, target.subset)
        if tier != ref and tier not in tiers:
            tiers.append(tier)
    return tuple(tiers)


def select_endpoints(inputs: Inputs, ref: ClusterRef) -> tuple[ServiceEndpoint, ...] | None:
    """Endpoints of ``ref``'s service in its subset; None when the subset is not defined."""
    service, subset = ref
    endpoints = inputs.endpoints(service)
    if subset is None:
        return endpoints
    resolver = inputs.resolver(service)
    chosen = resolver.subsets.get(subset) if resolver is not None else None
    if chosen is None:
        return None
    if not chosen.tags and not chosen.meta:
        return endpoints
    return tuple(e for e in endpoints if chosen.selects(e.tags, dict(e.meta) if e.meta else {}))


def cluster_key(inputs: Inputs, ref: ClusterRef) -> Hashable:
    """Everything the cluster ``ref`` is built from (equal keys: an equal cluster)."""
    service = ref[0]
    tiers = failover_refs(inputs, ref)
    return (
        ref,
        inputs.mesh.connect_timeout_s,
        inputs.mesh.mtls,
        inputs.mesh.trust_domain,
        inputs.defaults(service),
        inputs.resolver(service),
        inputs.endpoints(service),
        # A tier's defaults count too: its mTLS mode decides the cluster's (cluster_tls).
        tuple(
            (t, inputs.resolver(t[0]), inputs.defaults(t[0]), inputs.endpoints(t[0])) for t in tiers
        ),
    )


def _endpoints(
    inputs: Inputs, ref: ClusterRef, priority: int, identity: str | None = None
) -> list[Endpoint]:
    selected = select_endpoints(inputs, ref) or ()
    return [
        Endpoint(host=e.host, port=e.port, priority=priority, tags=e.tags, spiffe_id=identity)
        for e in selected
    ]


def _mtls_mode(inputs: Inputs, service: str) -> str:
    defaults = inputs.defaults(service)
    mode = defaults.mtls if defaults is not None and defaults.mtls is not None else None
    return mode or inputs.mesh.mtls


def cluster_tls(inputs: Inputs, ref: ClusterRef) -> ClusterTls | None:
    """mTLS settings of the cluster ``ref``: None unless its endpoints (failover tiers
    included) are all sidecars and no service among the tiers has mTLS ``disabled``. Endpoints
    of a tier of another service expect that service's identity (``Endpoint.spiffe_id``)."""
    refs = (ref, *failover_refs(inputs, ref))
    if any(_mtls_mode(inputs, r[0]) == "disabled" for r in refs):
        return None
    selected = [e for r in refs for e in (select_endpoints(inputs, r) or ())]
    if not selected or not all(e.sidecar for e in selected):
        return None
    return ClusterTls(spiffe_id=spiffe_id(ref[0], inputs.mesh.trust_domain))


def build_cluster(inputs: Inputs, ref: ClusterRef) -> Cluster:
    """The cluster ``ref`` (named by :func:`cluster_name`)."""
    service, subset = ref
    tls = cluster_tls(inputs, ref)
    endpoints = _endpoints(inputs, ref, 0)
    for priority, tier in enumerate(failover_refs(inputs, ref), start=1):
        other = tier[0] != service and tls is not None
        identity = spiffe_id(tier[0], inputs.mesh.trust_domain) if other else None
        endpoints.extend(_endpoints(inputs, tier, priority, identity))
    endpoints.sort(key=lambda e: (e.priority, e.host, e.port, e.tags))
    defaults = inputs.defaults(service)
    resolver = inputs.resolver(service)
    connect_timeout = inputs.mesh.connect_timeout_s
    if resolver is not None and resolver.connect_timeout_s is not None:
        connect_timeout = resolver.connect_timeout_s
    elif defaults is not None and defaults.connect_timeout_s is not None:
        connect_timeout = defaults.connect_timeout_s
    if defaults is None:
        return Cluster(
            name=cluster_name(ref),
            service=service,
            subset=subset,
            endpoints=tuple(endpoints),
            connect_timeout_s=connect_timeout,
            tls=tls,
        )
    extra: dict[str, int] = {}
    if defaults.limits is not None:
        extra["max_connections"] = defaults.limits.max_connections
    return Cluster(
        name=cluster_name(ref),
        service=service,
        subset=subset,
        endpoints=tuple(endpoints),
        lb_policy=defaults.lb_policy,
        connect_timeout_s=connect_timeout,
        limits=defaults.limits,
        outlier_detection=defaults.outlier_detection,
        health_check=defaults.health_check,
        tls=tls,
        **extra,
    )
