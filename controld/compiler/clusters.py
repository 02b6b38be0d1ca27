"""Clusters: a service (or one subset of it) with its endpoints and connection settings.

Endpoints come from the discovery view, filtered by the subset's tags and meta, each with its
zone (registry service meta ``zone``, else its node's). The service's ``ServiceResolver``
failover targets are appended as tiers of priority 1, 2, ... . Every tier is carried, even
when a lower one is empty or entirely healthy: the sidecar picks the tier at run time from
its own view of health (health checks, outlier ejections, panic threshold).

Settings from ``ServiceDefaults``, copied unchanged: ``lb_policy``, ``hash_policy``,
``locality``, ``panic_threshold_percent``, ``retry_budget``, ``limits``, ``outlier_detection``
and ``health_check`` (a service without ServiceDefaults gets the model defaults).
``limits.max_connections`` is the cluster-wide breaker of each calling sidecar; the cluster's
own ``max_connections`` (the per-endpoint pool cap) keeps its default and is never derived from
it. ``connect_timeout_s`` comes from the resolver, else ``ServiceDefaults``, else the mesh.

TLS is decided per endpoint (:mod:`controld.compiler.endpoint_tls`): ``tls`` (originate mTLS,
expect the service's SPIFFE ID) is set when at least one endpoint is reached over mTLS;
endpoints reached in plaintext beside them carry ``plaintext``; plain endpoints under STRICT
are left out.
"""

from __future__ import annotations

from collections.abc import Hashable

from controld.compiler.endpoint_tls import EndpointDecision, decisions
from controld.compiler.inputs import ClusterRef, Inputs, cluster_name, spiffe_id
from controld.discovery.view import ServiceEndpoint
from meshcore.model.snapshot import Cluster, ClusterTls, Endpoint

__all__ = [
    "build_cluster",
    "cluster_decisions",
    "cluster_key",
    "cluster_tls",
    "failover_refs",
    "select_endpoints",
]


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


def cluster_decisions(inputs: Inputs, ref: ClusterRef) -> list[EndpointDecision]:
    """How each endpoint of the cluster ``ref`` (failover tiers included) is reached."""
    tiers = [(ref, 0, select_endpoints(inputs, ref) or ())]
    for priority, tier in enumerate(failover_refs(inputs, ref), start=1):
        tiers.append((tier, priority, select_endpoints(inputs, tier) or ()))
    return decisions(inputs, tiers)


def cluster_tls(
    inputs: Inputs, ref: ClusterRef, found: list[EndpointDecision] | None = None
) -> ClusterTls | None:
    """mTLS settings of the cluster ``ref``: set when at least one of its endpoints (failover
    tiers included) is reached over mTLS (see :mod:`controld.compiler.endpoint_tls`).
    ``found``: its :func:`cluster_decisions`, if made already."""
    found = cluster_decisions(inputs, ref) if found is None else found
    if not any(d.choice == "mtls" for d in found):
        return None
    return ClusterTls(spiffe_id=spiffe_id(ref[0], inputs.mesh.trust_domain))


def _endpoint(inputs: Inputs, ref: ClusterRef, decision: EndpointDecision, tls: bool) -> Endpoint:
    e = decision.endpoint
    other = decision.service != ref[0] and decision.choice == "mtls"
    return Endpoint(
        host=e.host,
        port=e.port,
        priority=decision.priority,
        tags=e.tags,
        spiffe_id=spiffe_id(decision.service, inputs.mesh.trust_domain) if other else None,
        plaintext=tls and decision.choice == "plaintext",
        zone=e.zone,
    )


def build_cluster(inputs: Inputs, ref: ClusterRef) -> Cluster:
    """The cluster ``ref`` (named by :func:`cluster_name`)."""
    service, subset = ref
    found = cluster_decisions(inputs, ref)
    tls = cluster_tls(inputs, ref, found)
    endpoints = [
        _endpoint(inputs, ref, d, tls is not None) for d in found if d.choice != "excluded"
    ]
    # Stable: ties (one address, two registrations) keep the canonical order of
    # Inputs.endpoints, never the view's.
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
        retry_budget=defaults.retry_budget,
        hash_policy=defaults.hash_policy,
        locality=defaults.locality,
        panic_threshold_percent=defaults.panic_threshold_percent,
        tls=tls,
    )
