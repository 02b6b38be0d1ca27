"""Route tables: an ``HTTPRoute`` turned into the routes of one outbound listener.

Each rule becomes a :class:`~meshcore.model.snapshot.Route` named after the rule (else
``rule-<i>``), in order, followed by a catch-all ``default`` route to the whole service.
Backends name clusters ``<service>[~<subset>]``; a reference without a subset goes to the
service's default subset when its resolver has one. Timeouts and retries: the rule's, else
the mesh's.
"""

from __future__ import annotations

from collections.abc import Hashable

from controld.compiler.inputs import ClusterRef, Inputs, cluster_name
from meshcore.model.resources import HTTPRoute, HTTPRouteRule
from meshcore.model.snapshot import Backend, Route, RouteMirror, RouteTable

__all__ = ["CATCH_ALL_ROUTE", "build_route_table", "route_refs", "rule_route_name", "table_key"]

#: Name of the last route of every compiled table (unmatched calls: the whole service).
CATCH_ALL_ROUTE = "default"


def rule_route_name(rule: HTTPRouteRule, index: int) -> str:
    """The route name of the ``index``-th rule."""
    return rule.name if rule.name is not None else f"rule-{index}"


def _rule_refs(inputs: Inputs, service: str, rule: HTTPRouteRule) -> list[ClusterRef]:
    refs: list[ClusterRef] = []
    if rule.redirect is None:
        if rule.backends:
            refs.extend(inputs.ref(b.service or service, b.subset) for b in rule.backends)
        else:
            refs.append(inputs.plain_ref(service))
    if rule.mirror is not None:
        refs.append(inputs.ref(rule.mirror.service, rule.mirror.subset))
    return refs


def route_refs(inputs: Inputs, service: str) -> tuple[ClusterRef, ...]:
    """Every cluster the route table of ``service`` names, sorted and without repeats."""
    refs = {inputs.plain_ref(service)}
    route = inputs.route(service)
    if route is not None:
        for rule in route.spec.rules:
            refs.update(_rule_refs(inputs, service, rule))
    return tuple(sorted(refs, key=cluster_name))


def table_key(inputs: Inputs, service: str) -> Hashable:
    """Everything the route table of ``service`` is built from."""
    route = inputs.route(service)
    services = {service}
    if route is not None:
        for rule in route.spec.rules:
            services.update(b.service for b in rule.backends if b.service is not None)
            if rule.mirror is not None:
                services.add(rule.mirror.service)
    return (
        service,
        inputs.mesh.timeout_s,
        inputs.mesh.retries,
        route.spec if route is not None else None,
        tuple((s, inputs.plain_ref(s)) for s in sorted(services)),
    )


def _rule_route(inputs: Inputs, service: str, rule: HTTPRouteRule, index: int) -> Route:
    mesh = inputs.mesh
    backends: tuple[Backend, ...] = ()
    if rule.redirect is None:
        if rule.backends:
            backends = tuple(
                Backend(
                    cluster=cluster_name(inputs.ref(b.service or service, b.subset)),
                    weight=b.weight,
                )
                for b in rule.backends
            )
        else:
            backends = (Backend(cluster=cluster_name(inputs.plain_ref(service))),)
    mirror = None
    if rule.mirror is not None:
        mirror = RouteMirror(
            cluster=cluster_name(inputs.ref(rule.mirror.service, rule.mirror.subset)),
            percent=rule.mirror.percent,
        )
    return Route(
        name=rule_route_name(rule, index),
        match=rule.match,
        backends=backends,
        timeout_s=rule.timeout_s if rule.timeout_s is not None else mesh.timeout_s,
        retries=rule.retries if rule.retries is not None else mesh.retries,
        fault=rule.fault,
        request_headers=rule.request_headers,
        response_headers=rule.response_headers,
        rewrite=rule.rewrite,
        redirect=rule.redirect,
        mirror=mirror,
    )


def build_route_table(inputs: Inputs, service: str) -> RouteTable:
    """The route table ``<service>`` of an outbound listener for ``service``."""
    route: HTTPRoute | None = inputs.route(service)
    routes: list[Route] = []
    taken: set[str] = set()
    if route is not None:
        for i, rule in enumerate(route.spec.rules):
            compiled = _rule_route(inputs, service, rule, i)
            if compiled.name in taken:
                # A clash validate_resources reports; "~" never occurs in a rule's own name.
                compiled = compiled.model_copy(update={"name": f"{compiled.name}~{i}"})
            taken.add(compiled.name)
            routes.append(compiled)
    # The catch-all's name may be taken too (also reported); never fail compiling over it.
    routes.append(
        Route(
            name=CATCH_ALL_ROUTE if CATCH_ALL_ROUTE not in taken else f"mesh-{CATCH_ALL_ROUTE}",
            backends=(Backend(cluster=cluster_name(inputs.plain_ref(service))),),
            timeout_s=inputs.mesh.timeout_s,
            retries=inputs.mesh.retries,
        )
    )
    return RouteTable(name=service, routes=tuple(routes))
