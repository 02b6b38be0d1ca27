"""Cross-resource checks: what each resource's own validation cannot see.

:func:`validate_resources` reports every problem of a whole set (empty list: the set
compiles as written). The API refuses to store a set with problems.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from controld.compiler.routes import CATCH_ALL_ROUTE, rule_route_name
from meshcore.model.policy import Protocol
from meshcore.model.resources import (
    MESH_NAME,
    AccessPolicy,
    HTTPRoute,
    RateLimit,
    ResourceSet,
    ServiceResolver,
)

__all__ = ["ResourceProblem", "validate_resources"]


@dataclass(frozen=True, order=True, slots=True)
class ResourceProblem:
    """One problem: which resource, where in it (dotted path), and what is wrong."""

    kind: str
    name: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f": {self.path}" if self.path else ""
        return f"{self.kind}/{self.name}{where}: {self.message}"


def _subset_problem(resources: ResourceSet, service: str, subset: str | None) -> str | None:
    if subset is None:
        return None
    resolver = resources.resolver(service)
    if resolver is None:
        return f"subset {subset!r} of {service!r}: the service has no ServiceResolver"
    if subset not in resolver.subsets:
        known = ", ".join(sorted(resolver.subsets)) or "none"
        return f"subset {subset!r} is not defined by ServiceResolver {service!r} (known: {known})"
    return None


def _protocol(resources: ResourceSet, service: str) -> Protocol:
    """``ServiceDefaults.protocol`` of ``service``, else the mesh's ``default_protocol``."""
    defaults = resources.service_defaults(service)
    if defaults is not None and defaults.protocol is not None:
        return defaults.protocol
    return resources.mesh().default_protocol


def _route_problems(resources: ResourceSet, route: HTTPRoute) -> list[ResourceProblem]:
    out: list[ResourceProblem] = []
    name = route.metadata.name
    service = route.spec.service

    def add(path: str, message: str) -> None:
        out.append(ResourceProblem("HTTPRoute", name, path, message))

    first = resources.route_for(service)
    if first is not None and first.metadata.name != name:
        add(
            "spec.service",
            f"service {service!r} already has HTTPRoute {first.metadata.name!r} "
            "(one HTTPRoute per service)",
        )
    if _protocol(resources, service) == "tcp":
        add("spec.service", f"service {service!r} uses protocol tcp: HTTP routes cannot apply")
    names = [rule_route_name(rule, i) for i, rule in enumerate(route.spec.rules)]
    counts = Counter(names)
    for i, rule in enumerate(route.spec.rules):
        route_name = names[i]
        if route_name == CATCH_ALL_ROUTE:
            add(f"spec.rules.{i}.name", f"{CATCH_ALL_ROUTE!r} is reserved for the catch-all route")
        elif counts[route_name] > 1:
            add(f"spec.rules.{i}.name", f"route name {route_name!r} is used by another rule")
        for j, backend in enumerate(rule.backends):
            problem = _subset_problem(resources, backend.service or service, backend.subset)
            if problem is not None:
                add(f"spec.rules.{i}.backends.{j}.subset", problem)
        if rule.mirror is not None:
            problem = _subset_problem(resources, rule.mirror.service, rule.mirror.subset)
            if problem is not None:
                add(f"spec.rules.{i}.mirror.subset", problem)
    return out


def _resolver_problems(resources: ResourceSet, resolver: ServiceResolver) -> list[ResourceProblem]:
    out: list[ResourceProblem] = []
    service = resolver.metadata.name
    spec = resolver.spec
    if spec.default_subset is not None and spec.default_subset not in spec.subsets:
        out.append(
            ResourceProblem(
                "ServiceResolver",
                service,
                "spec.default_subset",
                f"default_subset {spec.default_subset!r} is not one of subsets",
            )
        )
    for i, target in enumerate(spec.failover):
        target_service = target.service or service
        if target.subset is None:
            continue
        if target_service == service:
            ok = target.subset in spec.subsets
            problem = None if ok else f"subset {target.subset!r} is not one of subsets"
        else:
            problem = _subset_problem(resources, target_service, target.subset)
        if problem is not None:
            out.append(
                ResourceProblem("ServiceResolver", service, f"spec.failover.{i}.subset", problem)
            )
    return out


def _access_problems(policy: AccessPolicy) -> list[ResourceProblem]:
    out: list[ResourceProblem] = []
    for i, rule in enumerate(policy.spec.rules):
        jwt = rule.jwt
        if jwt is not None and (jwt.jwks_uri is None) == (jwt.jwks_file is None):
            out.append(
                ResourceProblem(
                    "AccessPolicy",
                    policy.metadata.name,
                    f"spec.rules.{i}.jwt",
                    "set exactly one of jwks_uri, jwks_file",
                )
            )
    return out


def _rate_limit_problems(resources: ResourceSet, limit: RateLimit) -> list[ResourceProblem]:
    # A tcp destination's sidecar sees connections, not requests: a request match could
    # never be evaluated, so it is refused rather than silently ignored.
    spec = limit.spec
    if spec.match is not None and _protocol(resources, spec.destination) == "tcp":
        message = "tcp services are limited per connection; match is for http"
        return [ResourceProblem("RateLimit", limit.metadata.name, "spec.match", message)]
    return []


def validate_resources(resources: ResourceSet) -> list[ResourceProblem]:
    """Every cross-resource problem of ``resources``, sorted."""
    problems: list[ResourceProblem] = []
    for (kind, name), resource in resources.resources.items():
        if kind != resource.kind or name != resource.metadata.name:
            problems.append(
                ResourceProblem(kind, name, "metadata.name", "stored under another kind/name")
            )
        if isinstance(resource, HTTPRoute):
            problems.extend(_route_problems(resources, resource))
        elif isinstance(resource, ServiceResolver):
            problems.extend(_resolver_problems(resources, resource))
        elif isinstance(resource, AccessPolicy):
            problems.extend(_access_problems(resource))
        elif isinstance(resource, RateLimit):
            problems.extend(_rate_limit_problems(resources, resource))
        elif kind == "Mesh" and name != MESH_NAME:
            problems.append(
                ResourceProblem(kind, name, "metadata.name", f"a Mesh must be named {MESH_NAME!r}")
            )
    return sorted(problems)
