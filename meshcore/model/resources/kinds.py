"""The set of kinds: the discriminated ``Resource`` union and parsing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from meshcore.model.resources.access import AccessPolicy, RateLimit
from meshcore.model.resources.mesh import Mesh, ServiceDefaults
from meshcore.model.resources.resolver import ServiceResolver
from meshcore.model.resources.route import HTTPRoute

#: The plain union of the resource classes (for ``isinstance`` and type hints).
AnyResource = Mesh | ServiceDefaults | HTTPRoute | ServiceResolver | AccessPolicy | RateLimit

#: Any policy resource; pydantic picks the class by ``kind``.
Resource = Annotated[AnyResource, Field(discriminator="kind")]

#: Kind name -> class, in documentation order.
KINDS: dict[str, type[AnyResource]] = {
    "Mesh": Mesh,
    "ServiceDefaults": ServiceDefaults,
    "HTTPRoute": HTTPRoute,
    "ServiceResolver": ServiceResolver,
    "AccessPolicy": AccessPolicy,
    "RateLimit": RateLimit,
}

RESOURCE_ADAPTER: TypeAdapter[Resource] = TypeAdapter(Resource)


def parse_resource(data: Mapping[str, Any]) -> Resource:
    """Validate one resource document (raises :class:`pydantic.ValidationError`)."""
    return RESOURCE_ADAPTER.validate_python(data if isinstance(data, dict) else dict(data))


def resource_key(resource: Resource) -> tuple[str, str]:
    """``(kind, name)``: a resource's identity in a set and in the store."""
    return (resource.kind, resource.metadata.name)
