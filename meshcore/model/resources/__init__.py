"""Policy resources: YAML documents with ``apiVersion``, ``kind``, ``metadata`` and ``spec``.

Kinds: ``Mesh``, ``ServiceDefaults``, ``HTTPRoute``, ``ServiceResolver``, ``AccessPolicy``,
``RateLimit`` (see ``docs/policy.md``). Pure values: the control plane stores them and
compiles them, with the discovered endpoints, into each sidecar's snapshot.
"""

from meshcore.model.resources.access import (
    AccessPolicy,
    AccessPolicySpec,
    RateLimit,
    RateLimitSpec,
)
from meshcore.model.resources.envelope import API_VERSION, NAME_PATTERN, Metadata, ResourceBase
from meshcore.model.resources.kinds import (
    KINDS,
    RESOURCE_ADAPTER,
    AnyResource,
    Resource,
    parse_resource,
    resource_key,
)
from meshcore.model.resources.mesh import (
    MESH_NAME,
    Mesh,
    MeshSpec,
    ServiceDefaults,
    ServiceDefaultsSpec,
)
from meshcore.model.resources.resolver import (
    FailoverTarget,
    ServiceResolver,
    ServiceResolverSpec,
    SubsetFilter,
)
from meshcore.model.resources.resource_set import ResourceSet
from meshcore.model.resources.route import (
    HTTPRoute,
    HTTPRouteRule,
    HTTPRouteSpec,
    Mirror,
    RouteBackend,
)
from meshcore.model.resources.schema import json_schemas

__all__ = [
    "API_VERSION",
    "KINDS",
    "MESH_NAME",
    "NAME_PATTERN",
    "RESOURCE_ADAPTER",
    "AccessPolicy",
    "AccessPolicySpec",
    "AnyResource",
    "FailoverTarget",
    "HTTPRoute",
    "HTTPRouteRule",
    "HTTPRouteSpec",
    "Mesh",
    "MeshSpec",
    "Metadata",
    "Mirror",
    "RateLimit",
    "RateLimitSpec",
    "Resource",
    "ResourceBase",
    "ResourceSet",
    "RouteBackend",
    "ServiceDefaults",
    "ServiceDefaultsSpec",
    "ServiceResolver",
    "ServiceResolverSpec",
    "SubsetFilter",
    "json_schemas",
    "parse_resource",
    "resource_key",
]
