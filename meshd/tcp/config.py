"""The configuration a TCP listener's connections use, built from one snapshot."""

from __future__ import annotations

from dataclasses import dataclass

from meshd.access.guard import InboundGuard
from meshd.cluster.runtime import ClusterRuntime


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
