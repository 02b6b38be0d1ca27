"""``HTTPRoute``: how calls to one service are matched, split, retried and rewritten."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from meshcore.model.base import Frozen
from meshcore.model.match import duplicates
from meshcore.model.policy import SERVICE_PATTERN, RouteRuleBase
from meshcore.model.resources.envelope import ResourceBase

SUBSET_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$"


class RouteBackend(Frozen):
    """A weighted share of a rule's traffic: a service (default the route's) and subset."""

    service: str | None = Field(default=None, pattern=SERVICE_PATTERN)
    subset: str | None = Field(default=None, pattern=SUBSET_PATTERN)
    weight: int = Field(default=1, ge=0, le=10_000)


class Mirror(Frozen):
    """Copy ``percent`` of the rule's requests to another service; answers are discarded."""

    service: str = Field(pattern=SERVICE_PATTERN)
    subset: str | None = Field(default=None, pattern=SUBSET_PATTERN)
    percent: float = Field(default=100.0, ge=0, le=100)


class HTTPRouteRule(RouteRuleBase[RouteBackend, Mirror]):
    """One rule; the first rule whose ``match`` holds takes the request.

    No ``backends``: the whole route's service. ``redirect`` answers instead of forwarding
    and excludes ``backends``.
    """

    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,62})?$")

    @model_validator(mode="after")
    def _targets(self) -> HTTPRouteRule:
        if self.redirect is not None and self.backends:
            raise ValueError("set redirect or backends, not both")
        if self.backends and sum(b.weight for b in self.backends) == 0:
            raise ValueError("at least one backend needs a weight above 0")
        return self


class HTTPRouteSpec(Frozen):
    """Ordered rules for calls to ``service``; unmatched calls go to the whole service."""

    service: str = Field(pattern=SERVICE_PATTERN)
    rules: tuple[HTTPRouteRule, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> HTTPRouteSpec:
        dup = duplicates([r.name for r in self.rules if r.name is not None])
        if dup:
            raise ValueError(f"duplicate rule names: {', '.join(dup)}")
        return self


class HTTPRoute(ResourceBase):
    """Routing of HTTP calls to one service, from any source (one HTTPRoute per service)."""

    kind: Literal["HTTPRoute"] = "HTTPRoute"
    spec: HTTPRouteSpec
