"""The configuration a TCP listener's connections use, built from one snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from meshd.access.guard import InboundGuard
from meshd.cluster.runtime import ClusterRuntime


class ConnectionRateCheck(Protocol):
    """The connection-rate limits of a listener (:mod:`meshd.ratelimit`)."""

    def check_connection(self, source: bytes | None) -> float | None:
        """None: the new connection may pass (a token was taken); else seconds until one may.

        ``source``: the peer's SPIFFE ID, else its IP address."""
        ...


@dataclass(frozen=True, slots=True)
class TcpListenerConfig:
    """What a TCP listener's connections use."""

    name: str
    direction: str
    local_service: str
    cluster: ClusterRuntime
    idle_timeout_s: float
    #: Inbound access policy, checked on the peer's identity (None: no policy).
    guard: InboundGuard | None = None
    #: Connection-rate limits, checked after the access policy (None: none, no cost).
    rate_limiter: ConnectionRateCheck | None = None
