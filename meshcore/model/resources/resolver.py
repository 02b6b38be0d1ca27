"""``ServiceResolver``: a service's subsets (by registry tags and meta) and failover order."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from meshcore.model.base import Frozen
from meshcore.model.policy import SERVICE_PATTERN
from meshcore.model.resources.envelope import ResourceBase
from meshcore.model.resources.route import SUBSET_PATTERN

_SUBSET = re.compile(SUBSET_PATTERN)


class SubsetFilter(Frozen):
    """Instances in a subset have every one of ``tags`` and every ``meta`` pair."""

    tags: tuple[str, ...] = ()
    meta: dict[str, str] = Field(default_factory=dict)

    def selects(self, tags: tuple[str, ...] | frozenset[str], meta: dict[str, str]) -> bool:
        """Whether an instance with these registry tags and meta is in the subset."""
        return all(t in tags for t in self.tags) and all(
            meta.get(k) == v for k, v in self.meta.items()
        )


class FailoverTarget(Frozen):
    """Where traffic goes when the primary has no healthy endpoint."""

    #: None: the same service.
    service: str | None = Field(default=None, pattern=SERVICE_PATTERN)
    subset: str | None = Field(default=None, pattern=SUBSET_PATTERN)


class ServiceResolverSpec(Frozen):
    """Subsets of a service's instances, the default one, and the failover order."""

    subsets: dict[str, SubsetFilter] = Field(default_factory=dict)
    #: Traffic that names no subset goes here; None: all instances.
    default_subset: str | None = None
    failover: tuple[FailoverTarget, ...] = ()
    connect_timeout_s: float | None = Field(default=None, gt=0)

    @field_validator("subsets")
    @classmethod
    def _names(cls, value: dict[str, SubsetFilter]) -> dict[str, SubsetFilter]:
        for name in value:
            if not _SUBSET.match(name):
                raise ValueError(f"not a valid subset name: {name!r}")
        return value

    @model_validator(mode="after")
    def _default(self) -> ServiceResolverSpec:
        if self.default_subset is not None and self.default_subset not in self.subsets:
            raise ValueError(f"default_subset {self.default_subset!r} is not one of subsets")
        return self


class ServiceResolver(ResourceBase):
    """How a service's instances are grouped and failed over; the name is the service's."""

    kind: Literal["ServiceResolver"] = "ServiceResolver"
    spec: ServiceResolverSpec = ServiceResolverSpec()
