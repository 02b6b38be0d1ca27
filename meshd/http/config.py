"""The configuration an HTTP listener's requests use, built from one snapshot."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from meshcore.routing import CompiledRoute, CompiledRouteTable
from meshd.access.guard import InboundGuard
from meshd.cluster.runtime import ClusterRuntime
from meshd.http.decide import RoutePolicy, compile_policies


class RateLimitCheck(Protocol):
    """The rate limits of a listener (:mod:`meshd.ratelimit`)."""

    def check(
        self,
        *,
        source: bytes | None,
        method: bytes,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> float | None:
        """None: the request may pass (a token was taken); else seconds until it may
        (the ``retry-after``)."""
        ...


@dataclass(frozen=True, slots=True)
class HttpListenerConfig:
    """What an HTTP listener's requests use: one snapshot's routes, clusters and limits."""

    name: str
    direction: str
    local_service: str
    routes: CompiledRouteTable
    clusters: Mapping[str, ClusterRuntime]
    idle_timeout_s: float
    headers_timeout_s: float
    max_head_bytes: int
    #: Message limits (meshcore.model.Listener has their defaults).
    max_headers: int
    max_response_head_bytes: int
    max_response_headers: int
    max_requests_per_connection: int
    version: int = 0
    #: Inbound access policy checked before routing (None: no policy, no cost).
    guard: InboundGuard | None = None
    #: Rate limits checked after the access policy (None: none, no cost).
    rate_limiter: RateLimitCheck | None = None
    #: ``%2F``/``%5C`` in paths: keep, reject, unescape or redirect.
    escaped_slashes: str = "keep"

    #: The first route when it matches everything, so matching can be skipped.
    first_route: CompiledRoute | None = None
    #: Each route's compiled policies, by route name (built from ``routes``).
    policies: Mapping[str, RoutePolicy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        routes = self.routes.routes
        if routes and routes[0].is_catch_all:
            object.__setattr__(self, "first_route", routes[0])
        object.__setattr__(self, "policies", compile_policies(self.routes))
