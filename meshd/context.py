"""What every downstream connection of a sidecar shares (HTTP and TCP): process state, clock,
and the seams a connection finds its listener's configuration through."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

import structlog
import trio

from meshd.accesslog import AccessLog
from meshd.net.trio_io import tick_in_trio_io
from meshd.stats import Stats

if TYPE_CHECKING:
    from meshd.mtls import MeshTls

log = structlog.get_logger("meshd.context")

#: How late a deadline may fire (the reaper's period).
DEADLINE_RESOLUTION_S: Final = 0.05

#: The proxy's clock (CLOCK_MONOTONIC): a plain C call, where trio.current_time() costs
#: three Python frames. Deadlines and durations are real time even under a test's MockClock.
#: (Final: compiled modules read it from a C static, not from a module dict, per call.)
now: Final = time.monotonic


class Connection(Protocol):
    """What the process-wide bookkeeping needs from a downstream connection."""

    deadline: float

    def expire(self) -> None:
        """The deadline passed."""

    def drain(self) -> None:
        """Close after the request in flight, or now if there is none."""


class MirrorSink(Protocol):
    """Where the request path hands copies of requests to mirror (:mod:`meshd.http.mirror`)."""

    def submit(self, cluster: str, request: bytes) -> bool:
        """Queue ``request`` (head and body, serialized) for ``cluster`` without waiting;
        False when dropped (too many copies in flight)."""
        ...


class RequestObserver(Protocol):
    """Sees finished HTTP exchanges: the span recorder and the tap sampler
    (:mod:`meshd.telemetry`). Installed in :class:`ProxyShared` only while it has work, so
    the request path pays one ``is None`` check otherwise."""

    def observe(self, record: ExchangeRecord) -> None:
        """Look at one finished exchange (must not block or raise)."""
        ...


class TapObserver(RequestObserver, Protocol):
    """The tap sampler: asked first, with the values its filters look at, so a request no
    tap can keep (over the rate, or not matching) costs no record."""

    def wants(self, source: str, destination: str, method: str, code: int, target: bytes) -> bool:
        """Whether :meth:`observe` would keep this exchange now (cheap)."""
        ...


@dataclass(slots=True, frozen=True)
class ExchangeRecord:
    """A finished HTTP exchange, as :class:`RequestObserver` objects see it."""

    direction: str
    source: str
    destination: str
    route: str
    method: str
    #: Request target as received (bytes: decoded only by an observer that keeps it).
    target: bytes
    code: int
    #: Monotonic start (:func:`now`) and duration.
    start: float
    seconds: float
    #: ``host:port`` of the upstream endpoint ("" when none was reached).
    endpoint: str
    #: The SPIFFE ID of the peer: inbound the client's, outbound the cluster's expected one.
    peer_identity: str
    #: ``traceparent`` as received and as forwarded (None: none / not forwarded).
    traceparent_in: bytes | None
    traceparent_out: bytes | None
    retries: int
    error: str


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
    #: Sends mirrored copies of requests (None: mirroring is not running).
    mirror: MirrorSink | None = None
    #: Active taps (None: no tap is active, nothing is sampled).
    tap: TapObserver | None = None
    #: Records sampled spans (None: tracing is off).
    tracer: RequestObserver | None = None

    def start_drain(self) -> None:
        """Finish in-flight requests, then close; idle keep-alive connections close now."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()

    async def run_deadlines(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Cancel connections whose deadline has passed, checking every 50 ms while there are
        connections.

        Connections keep their deadline in a plain attribute: moving it is a store, where
        moving a trio cancel scope's deadline re-registers it (three times per request). The
        sweep is a tick of Trio's I/O step (:func:`~meshd.net.trio_io.tick_in_trio_io`), not
        a task's ``trio.sleep``, wherever the step can keep it: no wake-up at all while the
        sidecar has no connection, and a cheap one otherwise.
        """
        undo = tick_in_trio_io(DEADLINE_RESOLUTION_S, self.sweep_deadlines, self.connections)
        task_status.started()
        if undo is not None:
            try:
                await trio.sleep_forever()
            finally:
                undo()
        while True:
            await trio.sleep(DEADLINE_RESOLUTION_S)
            self.sweep_deadlines(now())

    def sweep_deadlines(self, current: float) -> None:
        """Expire the connections whose deadline is before ``current`` (runs outside any
        task: never raises)."""
        expired: list[Connection] | None = None
        for conn in self.connections:
            if conn.deadline < current:
                if expired is None:
                    expired = []
                expired.append(conn)
        if expired is None:
            return
        for conn in expired:  # not while iterating: an expiry may end a connection
            try:
                conn.expire()
            except Exception:
                log.exception("expiring a connection failed")
