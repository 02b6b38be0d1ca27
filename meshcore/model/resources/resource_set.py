"""``ResourceSet``: every stored resource at one revision, with the lookups compilation needs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TypeVar

from meshcore.model.resources.access import AccessPolicy, RateLimit
from meshcore.model.resources.kinds import Resource, resource_key
from meshcore.model.resources.mesh import (
    MESH_NAME,
    Mesh,
    MeshSpec,
    ServiceDefaults,
    ServiceDefaultsSpec,
)
from meshcore.model.resources.resolver import ServiceResolver, ServiceResolverSpec
from meshcore.model.resources.route import HTTPRoute

_DEFAULT_MESH = MeshSpec()
_D = TypeVar("_D", AccessPolicy, RateLimit)


@dataclass(frozen=True, eq=False)
class ResourceSet:
    """Immutable resources keyed by ``(kind, name)`` at ``revision``.

    Lookups are indexed once, on first use, so compiling many proxies against one set is
    cheap. Build new sets with :meth:`with_changes`; never mutate ``resources``.
    """

    revision: int = 0
    resources: Mapping[tuple[str, str], Resource] = field(default_factory=dict)

    @classmethod
    def of(cls, resources: Iterable[Resource], revision: int = 0) -> ResourceSet:
        """A set holding ``resources`` (a later duplicate key replaces an earlier one)."""
        return cls(revision=revision, resources={resource_key(r): r for r in resources})

    def __len__(self) -> int:
        return len(self.resources)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ResourceSet):
            return NotImplemented
        return self.revision == other.revision and dict(self.resources) == dict(other.resources)

    __hash__ = None  # type: ignore[assignment]

    def get(self, kind: str, name: str) -> Resource | None:
        """The resource ``kind/name``, if present."""
        return self.resources.get((kind, name))

    @cached_property
    def _by_kind(self) -> dict[str, tuple[Resource, ...]]:
        out: dict[str, list[Resource]] = {}
        for key in sorted(self.resources):
            out.setdefault(key[0], []).append(self.resources[key])
        return {kind: tuple(items) for kind, items in out.items()}

    @cached_property
    def _routes(self) -> dict[str, HTTPRoute]:
        out: dict[str, HTTPRoute] = {}
        # Sorted by name: with duplicates (an invalid set) the first name wins, deterministically.
        for r in self._by_kind.get("HTTPRoute", ()):
            if isinstance(r, HTTPRoute):
                out.setdefault(r.spec.service, r)
        return out

    def _by_destination(self, kind: str, cls: type[_D]) -> dict[str, tuple[_D, ...]]:
        out: dict[str, list[_D]] = {}
        for r in self._by_kind.get(kind, ()):
            if isinstance(r, cls):
                out.setdefault(r.spec.destination, []).append(r)
        return {k: tuple(v) for k, v in out.items()}

    @cached_property
    def _access(self) -> dict[str, tuple[AccessPolicy, ...]]:
        return self._by_destination("AccessPolicy", AccessPolicy)

    @cached_property
    def _limits(self) -> dict[str, tuple[RateLimit, ...]]:
        return self._by_destination("RateLimit", RateLimit)

    def of_kind(self, kind: str) -> tuple[Resource, ...]:
        """Every resource of ``kind``, sorted by name."""
        return self._by_kind.get(kind, ())

    def mesh(self) -> MeshSpec:
        """The spec of the ``Mesh`` named ``default``, or the defaults when there is none."""
        found = self.resources.get(("Mesh", MESH_NAME))
        return found.spec if isinstance(found, Mesh) else _DEFAULT_MESH

    def service_defaults(self, service: str) -> ServiceDefaultsSpec | None:
        """The ``ServiceDefaults`` spec of ``service``, if any."""
        found = self.resources.get(("ServiceDefaults", service))
        return found.spec if isinstance(found, ServiceDefaults) else None

    def route_for(self, service: str) -> HTTPRoute | None:
        """The ``HTTPRoute`` whose ``spec.service`` is ``service`` (first by name), if any."""
        return self._routes.get(service)

    def resolver(self, service: str) -> ServiceResolverSpec | None:
        """The ``ServiceResolver`` spec of ``service``, if any."""
        found = self.resources.get(("ServiceResolver", service))
        return found.spec if isinstance(found, ServiceResolver) else None

    def access_policies_for(self, destination: str) -> tuple[AccessPolicy, ...]:
        """Access policies whose destination is ``destination``, sorted by name."""
        return self._access.get(destination, ())

    def rate_limits_for(self, destination: str) -> tuple[RateLimit, ...]:
        """Rate limits whose destination is ``destination``, sorted by name."""
        return self._limits.get(destination, ())

    def with_changes(
        self,
        upserts: Iterable[Resource] = (),
        deletes: Iterable[tuple[str, str]] = (),
        revision: int | None = None,
    ) -> ResourceSet:
        """A new set: ``deletes`` removed, then ``upserts`` added or replaced.

        ``revision`` None keeps this set's revision.
        """
        resources = dict(self.resources)
        for key in deletes:
            resources.pop(key, None)
        for r in upserts:
            resources[resource_key(r)] = r
        return ResourceSet(
            revision=self.revision if revision is None else revision, resources=resources
        )
