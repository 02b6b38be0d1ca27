"""The compiler's view of its inputs: per-call memoized lookups and the naming rules.

One :class:`Inputs` wraps a discovery view and a resource set for one compilation pass;
lookups that every proxy repeats (a service's protocol, its default subset, ...) run once.

Order never leaks into the output: a service's endpoints are handed out in one canonical
order (:func:`endpoint_order`), whatever order the view holds them in, so everything built
from them (cluster endpoints, ties in their sort included; the excluded ones that ``status``
and ``explain`` list; the memo keys) is the same for the same set of endpoints.
"""

from __future__ import annotations

from dataclasses import fields
from itertools import pairwise
from typing import Any

from controld.discovery.view import DiscoveryView, ServiceEndpoint
from meshcore.model.policy import Protocol
from meshcore.model.resources import (
    HTTPRoute,
    MeshSpec,
    ResourceSet,
    ServiceDefaultsSpec,
    ServiceResolverSpec,
)

__all__ = ["ClusterRef", "Inputs", "cluster_name", "endpoint_order", "spiffe_id"]

#: A cluster as the compiler thinks of it: ``(service, subset or None)``.
ClusterRef = tuple[str, str | None]

#: Separates service and subset in cluster names (``api~v2``).
SUBSET_SEPARATOR = "~"


def cluster_name(ref: ClusterRef) -> str:
    """``<service>`` or ``<service>~<subset>``."""
    service, subset = ref
    return service if subset is None else f"{service}{SUBSET_SEPARATOR}{subset}"


def spiffe_id(source: str, trust_domain: str, namespace: str = "default") -> str:
    """An access-rule source as an identity: service names become SPIFFE IDs.

    ``"*"`` and ``spiffe://`` IDs are kept as they are.
    """
    if source == "*" or source.startswith("spiffe://"):
        return source
    return f"spiffe://{trust_domain}/ns/{namespace}/svc/{source}"


_ENDPOINT_FIELDS = tuple(f.name for f in fields(ServiceEndpoint))


def endpoint_order(endpoint: ServiceEndpoint) -> tuple[tuple[bool, Any], ...]:
    """A total sort key over every field of ``endpoint`` (None, as in ``zone``, sorts first:
    the dataclass's own order would compare None with a string and raise)."""
    return tuple(
        (value is not None, value)
        for value in (getattr(endpoint, name) for name in _ENDPOINT_FIELDS)
    )


def _in_order(endpoints: tuple[ServiceEndpoint, ...]) -> bool:
    """Whether ``endpoints`` is sorted by :func:`endpoint_order` already (build_view sorts:
    the usual case, checked with the dataclass's cheaper order, which agrees with it where
    it doesn't raise)."""
    try:
        for a, b in pairwise(endpoints):
            if a.host != b.host:  # ServiceEndpoint's first field, mostly decisive: no tuples
                if a.host > b.host:
                    return False
            elif not a <= b:
                return False
    except TypeError:  # None against a string: sort by endpoint_order
        return False
    return True


class Inputs:
    """Discovery view plus resources, with memoized per-service lookups (one pass only)."""

    __slots__ = ("_defaults", "_endpoints", "_resolvers", "_routes", "mesh", "resources", "view")

    def __init__(self, view: DiscoveryView, resources: ResourceSet) -> None:
        self.view = view
        self.resources = resources
        self.mesh: MeshSpec = resources.mesh()
        self._defaults: dict[str, ServiceDefaultsSpec | None] = {}
        self._resolvers: dict[str, ServiceResolverSpec | None] = {}
        self._routes: dict[str, HTTPRoute | None] = {}
        self._endpoints: dict[str, tuple[ServiceEndpoint, ...]] = {}

    def defaults(self, service: str) -> ServiceDefaultsSpec | None:
        """The service's ``ServiceDefaults`` spec."""
        try:
            return self._defaults[service]
        except KeyError:
            found = self._defaults[service] = self.resources.service_defaults(service)
            return found

    def resolver(self, service: str) -> ServiceResolverSpec | None:
        """The service's ``ServiceResolver`` spec."""
        try:
            return self._resolvers[service]
        except KeyError:
            found = self._resolvers[service] = self.resources.resolver(service)
            return found

    def route(self, service: str) -> HTTPRoute | None:
        """The ``HTTPRoute`` of calls to the service."""
        try:
            return self._routes[service]
        except KeyError:
            found = self._routes[service] = self.resources.route_for(service)
            return found

    def endpoints(self, service: str) -> tuple[ServiceEndpoint, ...]:
        """The service's healthy endpoints from discovery, sorted by :func:`endpoint_order`."""
        try:
            return self._endpoints[service]
        except KeyError:
            found = self.view.endpoints(service)
            if not _in_order(found):
                found = tuple(sorted(found, key=endpoint_order))
            self._endpoints[service] = found
            return found

    def protocol(self, service: str) -> Protocol:
        """``ServiceDefaults.protocol``, else the mesh's ``default_protocol``."""
        defaults = self.defaults(service)
        if defaults is not None and defaults.protocol is not None:
            return defaults.protocol
        return self.mesh.default_protocol

    def plain_ref(self, service: str) -> ClusterRef:
        """Where a reference naming no subset goes: the resolver's default subset, else all."""
        resolver = self.resolver(service)
        return (service, resolver.default_subset if resolver is not None else None)

    def ref(self, service: str, subset: str | None) -> ClusterRef:
        """The cluster for a (service, subset) reference."""
        return self.plain_ref(service) if subset is None else (service, subset)
