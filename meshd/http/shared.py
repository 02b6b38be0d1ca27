"""What every HTTP connection of a sidecar shares: listener configuration, process state, clock."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

import trio

from meshcore.routing import CompiledRoute, CompiledRouteTable
from meshd.accesslog import AccessLog
from meshd.cluster.runtime import ClusterRuntime
from meshd.http.guard import InboundGuard
from meshd.mtls import MeshTls
from meshd.stats import Stats

#: How late a deadline may fire (the reaper's period).
DEADLINE_RESOLUTION_S: Final = 0.05

#: The proxy's clock (CLOCK_MONOTONIC): a plain C call, where trio.current_time() costs
#: three Python frames. Deadlines and durations are real time even under a test's MockClock.
now = time.monotonic


class Connection(Protocol):
    """What the process-wide bookkeeping needs from a downstream connection."""

    deadline: float

    def expire(self) -> None:
        """The deadline passed."""

    def drain(self) -> None:
        """Close after the request in flight, or now if there is none."""


class ConfigSource(Protocol):
    """Where a connection finds its listener's configuration in force now (a listener slot).

    Route tables and clusters of a new snapshot apply to the next request of an existing
    keep-alive connection, as Envoy applies a route update to new streams: otherwise an app
    with a connection pool would never see a traffic shift.
    """

    @property
    def config(self) -> object:
        """The listener's current configuration."""
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

    #: The first route when it matches everything, so matching can be skipped.
    first_route: CompiledRoute | None = None

    def __post_init__(self) -> None:
        routes = self.routes.routes
        if routes and routes[0].is_catch_all:
            object.__setattr__(self, "first_route", routes[0])


@dataclass(slots=True, eq=False)
class ProxyShared:
    """State shared by every connection of a sidecar process."""

    stats: Stats
    access_log: AccessLog
    trace_sample_rate: float = 0.01
    rng: random.Random = field(default_factory=random.Random)
    draining: bool = False
    connections: set[Connection] = field(default_factory=set)
    #: mTLS mode and contexts (None: this process does no TLS).
    tls: MeshTls | None = None

    def start_drain(self) -> None:
        """Finish in-flight requests, then close; idle keep-alive connections close now."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()

    async def run_deadlines(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Cancel connections whose deadline has passed, checking every 50 ms.

        Connections keep their deadline in a plain attribute: moving it is a store, where
        moving a trio cancel scope's deadline re-registers it (three times per request).
        """
        task_status.started()
        while True:
            await trio.sleep(DEADLINE_RESOLUTION_S)
            current = now()
            for conn in self.connections:
                if conn.deadline < current:
                    conn.expire()


#: The proxy's clock (CLOCK_MONOTONIC): a plain C call, where trio.current_time() costs
#: three Python frames. Deadlines and durations are real time even under a test's MockClock.
_now = time.monotonic
