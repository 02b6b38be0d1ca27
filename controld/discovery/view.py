"""The discovery view: service -> healthy endpoints, computed (purely) from health entries.

A mesh service instance is reached through its sidecar: for an instance that has
``<service>-sidecar-proxy`` registrations (``Kind: connect-proxy`` whose ``Proxy`` names the
instance, on the same node) the endpoints are those proxies' addresses (their inbound
listeners), kept only while both the instance and the proxy are passing. An instance with no
sidecar is a plain service: its own address, kept while it is passing.

Traffic never bypasses the mesh: an instance whose sidecars are all unhealthy gets no endpoint,
and neither does an instance carrying meshd's :data:`SIDECAR_META_KEY` whose sidecar has not
been seen (yet: the service's and the proxy's health arrive through separate queries).

An endpoint's zone is the instance's (not its sidecar's): ``Service.Meta["zone"]``, else the
instance node's ``Meta["zone"]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from meshcore.registry import CONNECT_PROXY, SIDECAR_META_KEY, HealthEntry

__all__ = [
    "ZONE_META_KEY",
    "DiscoveryView",
    "ServiceEndpoint",
    "build_view",
    "instance_zone",
    "is_proxy_service",
]

#: The registry meta key (service, else node) naming an instance's zone.
ZONE_META_KEY = "zone"

_PROXY_SUFFIX = "-sidecar-proxy"
_EMPTY: Mapping[str, tuple[ServiceEndpoint, ...]] = MappingProxyType({})


@dataclass(frozen=True, order=True)
class ServiceEndpoint:
    """One place to send a service's traffic."""

    host: str
    port: int
    #: The service instance behind it (for a sidecar: the instance it fronts).
    instance_id: str
    node: str
    #: True when ``host:port`` is the instance's sidecar inbound listener.
    sidecar: bool
    #: Tags of the service instance (not of its sidecar).
    tags: tuple[str, ...] = ()
    #: The service instance's ``Service.Meta`` as sorted (key, value) pairs, for subset
    #: filters; meshd's own :data:`SIDECAR_META_KEY` marker is left out.
    meta: tuple[tuple[str, str], ...] = ()
    #: The instance's zone: its ``Service.Meta`` ``zone``, else its node's ``Meta`` ``zone``
    #: (None: neither says). Used by locality-aware load balancing.
    zone: str | None = None


@dataclass(frozen=True)
class DiscoveryView:
    """An immutable snapshot of healthy endpoints; the watcher swaps in a new one on change.

    ``version`` counts the changes the watcher has seen (0 for the first, empty view).
    """

    services: Mapping[str, tuple[ServiceEndpoint, ...]] = field(default_factory=lambda: _EMPTY)
    version: int = 0

    def endpoints(self, service: str) -> tuple[ServiceEndpoint, ...]:
        """Healthy endpoints of ``service`` (empty if unknown or none healthy)."""
        return self.services.get(service, ())

    @property
    def endpoint_count(self) -> int:
        """Healthy endpoints over all services."""
        return sum(len(eps) for eps in self.services.values())

    def same_services(self, other: DiscoveryView) -> bool:
        """Same services and endpoints (versions aside)."""
        return dict(self.services) == dict(other.services)


def is_proxy_service(name: str, entries: Iterable[HealthEntry]) -> bool:
    """Whether ``name`` is a sidecar-proxy service rather than an application service."""
    kinds = [e.service.kind for e in entries]
    if kinds:
        return any(k == CONNECT_PROXY for k in kinds)
    return name.endswith(_PROXY_SUFFIX)


def build_view(health: Mapping[str, Iterable[HealthEntry]], version: int = 0) -> DiscoveryView:
    """The view for ``{service name: its health entries}`` (see the module doc).

    Every application service in ``health`` gets a key, with ``()`` when nothing is healthy;
    sidecar-proxy services appear only through the services they front.
    """
    lists = {name: tuple(entries) for name, entries in health.items()}
    # (destination name, node) -> proxies on that node fronting an instance of that service
    proxies: dict[tuple[str, str], list[HealthEntry]] = {}
    for entries in lists.values():
        for entry in entries:
            spec = entry.service.proxy
            if entry.service.kind == CONNECT_PROXY and spec is not None:
                proxies.setdefault((spec.destination_service_name, entry.node), []).append(entry)

    services: dict[str, tuple[ServiceEndpoint, ...]] = {}
    for name, entries in sorted(lists.items()):
        if is_proxy_service(name, entries):
            continue
        endpoints: set[ServiceEndpoint] = set()
        for entry in entries:
            if entry.service.kind:  # a gateway or proxy registered under this name
                continue
            instance = entry.service
            fronting = [
                p
                for p in proxies.get((name, entry.node), ())
                if p.service.proxy is not None
                and p.service.proxy.destination_service_id in ("", instance.service_id)
            ]
            if entry.status != "passing":
                continue
            if not fronting:
                if instance.port and SIDECAR_META_KEY not in instance.meta:
                    endpoints.add(_endpoint(entry, entry, sidecar=False))
                continue
            for proxy in fronting:
                if proxy.status == "passing" and proxy.service.port:
                    endpoints.add(_endpoint(proxy, entry, sidecar=True))
        services[name] = tuple(sorted(endpoints))
    return DiscoveryView(services=MappingProxyType(services), version=version)


def instance_zone(instance: HealthEntry) -> str | None:
    """The zone of a service instance: its ``Service.Meta`` ``zone``, else its node's."""
    return instance.service.meta.get(ZONE_META_KEY) or instance.node_meta.get(ZONE_META_KEY) or None


def _endpoint(where: HealthEntry, instance: HealthEntry, *, sidecar: bool) -> ServiceEndpoint:
    return ServiceEndpoint(
        host=where.address,
        port=where.service.port,
        instance_id=instance.service.service_id,
        node=instance.node,
        sidecar=sidecar,
        tags=instance.service.tags,
        meta=tuple(sorted(kv for kv in instance.service.meta.items() if kv[0] != SIDECAR_META_KEY)),
        zone=instance_zone(instance),
    )
