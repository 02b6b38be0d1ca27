"""``AccessPolicy`` (who may call a service) and ``RateLimit`` (how fast)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from meshcore.model.base import Frozen
from meshcore.model.match import RouteMatch
from meshcore.model.policy import SERVICE_PATTERN, AccessRule
from meshcore.model.resources.envelope import ResourceBase


class AccessPolicySpec(Frozen):
    """Ordered access rules of inbound calls to ``destination``."""

    destination: str = Field(pattern=SERVICE_PATTERN)
    rules: tuple[AccessRule, ...] = ()


class AccessPolicy(ResourceBase):
    """Access rules of a service; several policies of one destination apply in name order."""

    kind: Literal["AccessPolicy"] = "AccessPolicy"
    spec: AccessPolicySpec


class RateLimitSpec(Frozen):
    """A token bucket over inbound calls to ``destination`` that match ``match``."""

    destination: str = Field(pattern=SERVICE_PATTERN)
    requests_per_second: float = Field(gt=0)
    burst: int = Field(ge=1)
    #: None: every request.
    match: RouteMatch | None = None
    #: One bucket per calling identity instead of one per destination sidecar.
    per_source: bool = False


class RateLimit(ResourceBase):
    """Inbound rate limit enforced by each of the destination's sidecars (429 when exceeded)."""

    kind: Literal["RateLimit"] = "RateLimit"
    spec: RateLimitSpec
