"""``explain``: what the mesh would do with one request from a source to a destination.

Compiles the source's snapshot (a synthetic sidecar calling only the destination unless a
real descriptor is given) and the destination's, then runs the request through the same
route matcher meshd uses (:mod:`meshcore.routing`) and the same access-policy evaluator
(:mod:`meshcore.authz`). The answer is the API's wire model
(:class:`~meshcore.api.explain.Explanation`), built here once.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from controld.compiler.clusters import cluster_decisions
from controld.compiler.endpoint_tls import mix_of
from controld.compiler.inputs import Inputs, spiffe_id
from controld.compiler.policy import inbound_policy
from controld.compiler.snapshot import Compiler, outbound_listener_name
from controld.discovery.view import DiscoveryView
from meshcore.api.explain import (
    ExplainAccess,
    ExplainBackend,
    ExplainCluster,
    ExplainEndpoint,
    ExplainMirror,
    Explanation,
)
from meshcore.authz import evaluate, normalize_path
from meshcore.matchers import RequestMatcher
from meshcore.model.base import SocketAddr
from meshcore.model.proxy import ProxyDescriptor, Upstream
from meshcore.model.resources import ResourceSet
from meshcore.model.snapshot import Cluster, Route, Snapshot
from meshcore.pathnorm import normalize_target
from meshcore.routing import CompiledRouteTable

__all__ = ["cluster_settings", "explain"]

_SOURCE_PROXY = "explain-source"
_DESTINATION_PROXY = "explain-destination"
_EXPLAIN_PORT = 15001
_INBOUND = SocketAddr(host="127.0.0.1", port=15006)


def _source_service(source: str) -> str:
    if source.startswith("spiffe://"):
        _, sep, tail = source.partition("/svc/")
        return tail.split("/", 1)[0] if sep and tail else "unknown"
    return source


def _source_proxy(
    source: str, destination: str, given: ProxyDescriptor | None, notes: list[str]
) -> ProxyDescriptor:
    if given is None:
        return ProxyDescriptor(
            proxy_id=_SOURCE_PROXY,
            service=_source_service(source),
            upstreams=(Upstream(service=destination, port=_EXPLAIN_PORT),),
        )
    if any(u.service == destination for u in given.upstreams):
        return given
    notes.append(
        f"{destination!r} is not an upstream of proxy {given.proxy_id!r}: explained as if it were"
    )
    taken = {u.port for u in given.upstreams}
    port = next(p for p in range(_EXPLAIN_PORT, 65536) if p not in taken)
    upstream = Upstream(service=destination, port=port)
    return given.model_copy(update={"upstreams": (*given.upstreams, upstream)})


def cluster_settings(cluster: Cluster) -> dict[str, Any]:
    """The settings of ``cluster`` that decide how the source's sidecar balances, limits,
    retries and checks it, as JSON: always ``lb_policy``, ``connect_timeout_s``,
    ``panic_threshold_percent`` and ``retry_budget``; ``hash_policy``, ``locality``,
    ``limits``, ``outlier_detection`` and ``health_check`` only when set."""
    out: dict[str, Any] = {
        "lb_policy": cluster.lb_policy,
        "connect_timeout_s": cluster.connect_timeout_s,
        "panic_threshold_percent": cluster.panic_threshold_percent,
        "retry_budget": cluster.retry_budget.model_dump(mode="json"),
    }
    for name in ("hash_policy", "locality", "limits", "outlier_detection", "health_check"):
        value = getattr(cluster, name)
        if value is not None:
            out[name] = value.model_dump(mode="json", exclude_defaults=name == "hash_policy")
    return out


def _cluster_view(cluster: Cluster, inputs: Inputs) -> ExplainCluster:
    return ExplainCluster(
        name=cluster.name,
        service=cluster.service,
        subset=cluster.subset,
        lb_policy=cluster.lb_policy,
        endpoints=tuple(
            ExplainEndpoint(
                host=e.host,
                port=e.port,
                priority=e.priority,
                tags=e.tags,
                tls="mtls" if cluster.tls is not None and not e.plaintext else "plaintext",
                zone=e.zone,
            )
            for e in cluster.endpoints
        ),
        mix=mix_of(cluster_decisions(inputs, (cluster.service, cluster.subset))),
        settings=cluster_settings(cluster),
    )


_ROUTE_POLICIES = ("retries", "fault", "request_headers", "response_headers", "rewrite")


def _route_policy(route: Route) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _ROUTE_POLICIES:
        value = getattr(route, name)
        if value is not None:
            out[name] = value.model_dump(mode="json", exclude_defaults=name != "retries")
    return out


def _backends(route: Route) -> tuple[ExplainBackend, ...]:
    total = sum(b.weight for b in route.backends)
    return tuple(
        ExplainBackend(
            cluster=b.cluster,
            weight=b.weight,
            percent=round(100.0 * b.weight / total, 3) if total else 0.0,
        )
        for b in route.backends
    )


def explain(
    view: DiscoveryView,
    resources: ResourceSet,
    *,
    source: str,
    destination: str,
    method: str = "GET",
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    source_proxy: ProxyDescriptor | None = None,
) -> Explanation:
    """How a ``method path`` request with ``headers`` from ``source`` to ``destination`` goes.

    ``source`` is a service name or a SPIFFE ID; ``path`` may carry a query string. The path
    is normalized as the sidecar does (raises :class:`~meshcore.pathnorm.MalformedPath`).
    """
    headers = headers or {}
    notes: list[str] = []
    src = _source_proxy(source, destination, source_proxy, notes)
    dst = ProxyDescriptor(proxy_id=_DESTINATION_PROXY, service=destination, inbound=_INBOUND)
    compiled = Compiler().compile_all(
        view,
        resources,
        {
            _SOURCE_PROXY: src.model_copy(update={"proxy_id": _SOURCE_PROXY}),
            _DESTINATION_PROXY: dst,
        },
    )
    src_snapshot: Snapshot = compiled[_SOURCE_PROXY][0]
    dst_snapshot: Snapshot = compiled[_DESTINATION_PROXY][0]
    inputs = Inputs(view, resources)
    if source_proxy is not None:
        assert src_snapshot.identity is not None
        source_id: str | None = src_snapshot.identity.spiffe_id
    else:
        source_id = spiffe_id(source, inputs.mesh.trust_domain)

    listener_name = outbound_listener_name(destination)
    listener = next(x for x in src_snapshot.listeners if x.name == listener_name)
    # The sidecar matches the normalized path (dot segments, //, unreserved escapes).
    normalized = normalize_target(path.encode("utf-8", "surrogateescape")).decode(
        "utf-8", "surrogateescape"
    )
    if normalized != path:
        notes.append(f"the sidecar normalizes the path to {normalized}")
    bare_path, _, query = normalized.partition("?")
    pairs = [(k.encode(), v.encode("utf-8", "surrogateescape")) for k, v in headers.items()]
    route_name: str | None = None
    backends: tuple[ExplainBackend, ...] = ()
    cluster_names: list[str] = []
    timeout: float | None = None
    redirect: dict[str, Any] | None = None
    mirror: ExplainMirror | None = None
    route_policy: dict[str, Any] = {}
    if listener.route_table is not None:
        table = src_snapshot.route_table(listener.route_table)
        assert table is not None
        # A fixed seed: the split is reported as weights, never drawn.
        rng = random.Random(0)  # noqa: S311
        matched = CompiledRouteTable(table, rng=rng).match(method, bare_path, pairs, query)
        if matched is None:
            notes.append("no route matches: the sidecar answers 404")
        else:
            route = matched.route
            route_name = route.name
            timeout = route.timeout_s
            route_policy = _route_policy(route)
            backends = _backends(route)
            cluster_names.extend(b.cluster for b in route.backends)
            if route.redirect is not None:
                redirect = route.redirect.model_dump(mode="json")
                notes.append("the sidecar answers with a redirect; nothing is forwarded")
            if route.mirror is not None:
                mirror = ExplainMirror(cluster=route.mirror.cluster, percent=route.mirror.percent)
                cluster_names.append(route.mirror.cluster)
    elif listener.cluster is not None:
        cluster_names.append(listener.cluster)
        notes.append(f"{destination!r} is a tcp service: no HTTP routing applies")
    clusters = []
    for name in dict.fromkeys(cluster_names):
        cluster = src_snapshot.cluster(name)
        if cluster is not None:
            view_ = _cluster_view(cluster, inputs)
            clusters.append(view_)
            for left_out in view_.mix.excluded:
                notes.append(
                    f"endpoint {left_out.host}:{left_out.port} of {left_out.service!r}"
                    f" is excluded from cluster {name!r}: {left_out.reason}"
                )
            if not cluster.endpoints:
                notes.append(f"cluster {name!r} has no healthy endpoint: the sidecar answers 503")

    decision = evaluate(
        dst_snapshot.inbound_policy,
        source_id=source_id,
        method=method,
        # As the sidecar sees it (meshd's guard normalises the same way).
        path=normalize_path(bare_path.encode("utf-8", "surrogateescape")).decode(
            "utf-8", "surrogateescape"
        ),
        headers=headers,
        l4=listener.protocol == "tcp",
    )
    origins = inbound_policy(inputs, destination)[1]
    policy_name = origins[decision.rule_index] if decision.rule_index is not None else None
    limits = tuple(
        rule.name
        for rule in dst_snapshot.rate_limits
        if rule.match is None
        or RequestMatcher.from_route_match(rule.match).matches(method, bare_path, pairs, query)
    )
    return Explanation(
        source=source,
        source_id=source_id,
        destination=destination,
        method=method,
        path=path,
        protocol=listener.protocol,
        listener=listener.name,
        route=route_name,
        backends=backends,
        clusters=tuple(clusters),
        access=ExplainAccess(
            action=decision.action,
            rule_index=decision.rule_index,
            policy=policy_name,
            reason=decision.reason,
        ),
        mtls=dst_snapshot.mtls,
        timeout_s=timeout,
        redirect=redirect,
        route_policy=route_policy,
        mirror=mirror,
        rate_limits=limits,
        notes=tuple(notes),
    )
