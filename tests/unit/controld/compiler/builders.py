"""Small builders of compiler inputs (views, resources, descriptors) for the tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from controld.discovery.view import DiscoveryView, ServiceEndpoint
from meshcore.model.proxy import ProxyDescriptor
from meshcore.model.resources import Resource, ResourceSet, parse_resource


def ep(
    host: str,
    port: int = 21000,
    *,
    tags: Sequence[str] = (),
    meta: Mapping[str, str] | None = None,
    instance: str | None = None,
    sidecar: bool = True,
    zone: str | None = None,
) -> ServiceEndpoint:
    """A healthy sidecar endpoint (``sidecar=False``: a plain instance, no sidecar)."""
    return ServiceEndpoint(
        host=host,
        port=port,
        instance_id=instance or f"{host}:{port}",
        node="n1",
        sidecar=sidecar,
        tags=tuple(tags),
        meta=tuple(sorted((meta or {}).items())),
        zone=zone,
    )


def view(services: Mapping[str, Iterable[ServiceEndpoint]], version: int = 1) -> DiscoveryView:
    """A discovery view (endpoints sorted as build_view sorts them)."""
    return DiscoveryView(
        services=MappingProxyType({k: tuple(sorted(v)) for k, v in services.items()}),
        version=version,
    )


def res(kind: str, name: str, spec: Mapping[str, Any]) -> Resource:
    """A parsed resource."""
    return parse_resource({"kind": kind, "metadata": {"name": name}, "spec": dict(spec)})


def rset(*resources: Resource, revision: int = 1) -> ResourceSet:
    """A resource set."""
    return ResourceSet.of(resources, revision=revision)


def route(service: str, *rules: Mapping[str, Any], name: str | None = None) -> Resource:
    """An HTTPRoute for ``service``."""
    return res("HTTPRoute", name or f"{service}-route", {"service": service, "rules": list(rules)})


def resolver(service: str, **spec: Any) -> Resource:
    """A ServiceResolver for ``service``."""
    return res("ServiceResolver", service, spec)


def defaults(service: str, **spec: Any) -> Resource:
    """ServiceDefaults for ``service``."""
    return res("ServiceDefaults", service, spec)


def mesh(**spec: Any) -> Resource:
    """The Mesh resource."""
    return res("Mesh", "default", spec)


def access(name: str, destination: str, *rules: Mapping[str, Any]) -> Resource:
    """An AccessPolicy."""
    return res("AccessPolicy", name, {"destination": destination, "rules": list(rules)})


def ratelimit(
    name: str, destination: str, rps: float = 10, burst: int = 5, **spec: Any
) -> Resource:
    """A RateLimit."""
    body = {"destination": destination, "requests_per_second": rps, "burst": burst, **spec}
    return res("RateLimit", name, body)


def proxy(
    proxy_id: str,
    service: str,
    upstreams: Sequence[str] = (),
    *,
    inbound: str | None = "127.0.0.1:15006",
    first_port: int = 15001,
) -> ProxyDescriptor:
    """A descriptor with upstreams on consecutive local ports."""
    return ProxyDescriptor.model_validate(
        {
            "proxy_id": proxy_id,
            "service": service,
            "inbound": inbound,
            "upstreams": [{"service": s, "port": first_port + i} for i, s in enumerate(upstreams)],
        }
    )
