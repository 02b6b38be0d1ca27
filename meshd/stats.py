"""The sidecar's counters.

The proxy's hot path only bumps plain ints (and one float) in dicts; nothing there allocates a
metric object or takes a lock. Their Prometheus view, :mod:`meshd.metrics`, writes the raw
counts as Prometheus text when ``/metrics`` is scraped, so the cost of the format is paid per
scrape, not per request.

Everything here runs on the daemon's one Trio thread, and the admin app writes the metrics on
that thread too, which is why plain dict updates need no locking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from meshcore.model import Endpoint
from meshd.policystats import PolicyStats

__all__ = [
    "AUTHZ_ACTIONS",
    "AUTHZ_ALLOW",
    "AUTHZ_AUDIT",
    "AUTHZ_DENY",
    "BUCKETS",
    "PoolStats",
    "Stats",
]

BUCKETS: Final[tuple[float, ...]] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds (seconds, inclusive) of the request duration histogram; ``+Inf`` is implied."""

_METHODS: Final = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)
_NBUCKETS: Final = len(BUCKETS) + 1  # the last slot counts observations above BUCKETS[-1]

# TCP record slots.
_OPENED, _CLOSED, _RECEIVED, _SENT = range(4)

#: Slots of a listener's access-decision counters (:meth:`Stats.authz_counters`).
AUTHZ_ACTIONS: tuple[str, ...] = ("allow", "deny", "audit")
AUTHZ_ALLOW, AUTHZ_DENY, AUTHZ_AUDIT = range(3)

PoolStats = Callable[[], Iterable[tuple[str, str, int, int]]]
"""Returns ``(cluster, endpoint "host:port", active, idle)`` for every pooled endpoint.

Called at scrape time on the Trio thread, so it may read the pools' live state directly.
"""

HttpKey = tuple[str, str, str, str, str, int]
TcpKey = tuple[str, str, str]
#: (cluster, endpoint host, endpoint port, status // 100)
EndpointKey = tuple[str, str, int, int]
#: (destination, route, reason)
RouteErrorKey = tuple[str, str, str]


def _bucket(seconds: float) -> int:
    """The histogram slot of ``seconds``: the first bound it doesn't exceed (what
    ``bisect_left(BUCKETS, seconds)`` gives). A loop, not bisect: requests mostly fall in the
    first slots, and compiled with mypyc the loop costs a tenth of the call into ``bisect``."""
    slot = 0
    for bound in BUCKETS:
        if seconds <= bound:
            return slot
        slot += 1
    return slot


class _Histogram:
    """Per-label-set request histogram: non-cumulative bucket counts plus the sum."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets = [0] * _NBUCKETS
        self.total = 0.0


class _LastHttp:
    """The labels of the request histogram counted last, and it: a sidecar's requests mostly
    repeat them (the same objects: the listener's, the route's), and comparing them costs less
    than the key's tuple, its hash and the dict lookup (compiled, ~1k instructions)."""

    __slots__ = ("code", "destination", "direction", "hist", "method", "route", "source")

    def __init__(self) -> None:
        self.direction = self.source = self.destination = self.route = self.method = ""
        self.code = -1  # matches no request
        self.hist = _Histogram()


class _LastEndpoint:
    """The same for the per-endpoint histograms, and the endpoint they were last read from."""

    __slots__ = ("cluster", "endpoint", "hist", "host", "port", "status_class")

    def __init__(self) -> None:
        self.cluster = self.host = ""
        self.port = self.status_class = -1  # matches no request
        self.hist = _Histogram()
        self.endpoint: Endpoint | None = None


class Stats:
    """Raw counters of one sidecar; every recording method is a few dict/list operations."""

    __slots__ = (
        "_authz",
        "_downstream",
        "_endpoints",
        "_http",
        "_last_endpoint",
        "_last_http",
        "_limit_events",
        "_registry",
        "_route_errors",
        "_snapshot_applied",
        "_snapshot_rejected",
        "_snapshot_version",
        "_tcp",
        "_upstream_errors",
        "cert_expiry",
        "policy",
    )

    def __init__(self) -> None:
        self._http: dict[HttpKey, _Histogram] = {}
        self._last_http = _LastHttp()
        self._last_endpoint = _LastEndpoint()
        self._tcp: dict[TcpKey, list[int]] = {}
        # listener -> [active, total]
        self._downstream: dict[str, list[int]] = {}
        # (listener, event) -> count; events are meshcore.net.accept.LIMIT_EVENTS
        self._limit_events: dict[tuple[str, str], int] = {}
        self._upstream_errors: dict[tuple[str, str], int] = {}
        self._snapshot_version = 0
        self._snapshot_applied = 0
        self._snapshot_rejected = 0
        self._registry: dict[str, int] = {}
        # listener -> counts by AUTHZ_ACTIONS slot
        self._authz: dict[str, list[int]] = {}
        #: Retries, breakers, ejections, health checks, rate limits, faults, mirroring.
        self.policy = PolicyStats()
        # Per upstream endpoint request histograms (outbound and inbound).
        self._endpoints: dict[EndpointKey, _Histogram] = {}
        # Failed outbound requests (status >= 500 or none) by destination, route and reason.
        self._route_errors: dict[RouteErrorKey, int] = {}
        #: The workload certificate's ``not_after`` (Unix seconds), None without one; read at
        #: scrape and report time.
        self.cert_expiry: Callable[[], float | None] = _no_expiry

    def http_request(  # noqa: PLR0917 -- positional on purpose: the proxy's call is fixed
        self,
        direction: str,
        source: str,
        destination: str,
        route: str,
        method: str,
        code: int,
        seconds: float,
    ) -> None:
        """Count one finished HTTP request and its duration."""
        if method not in _METHODS:
            # Any client can send any token as a method; keep the label set bounded.
            method = "OTHER"
        last = self._last_http
        if (
            last.code == code
            and last.route is route
            and last.destination is destination
            and last.source is source
            and last.method is method
            and last.direction is direction
        ):
            hist = last.hist
        else:
            key = (direction, source, destination, route, method, code)
            found = self._http.get(key)
            if found is None:
                found = self._http[key] = _Histogram()
            hist = last.hist = found
            last.direction, last.source, last.destination = direction, source, destination
            last.route, last.method, last.code = route, method, code
        hist.buckets[_bucket(seconds)] += 1
        hist.total += seconds

    def upstream_endpoint(
        self, cluster: str, host: str, port: int, code: int, seconds: float
    ) -> None:
        """Count one request answered (or failed: ``code`` 0) by an upstream endpoint."""
        status_class = code // 100
        last = self._last_endpoint
        if (
            last.status_class == status_class
            and last.port == port
            and last.host is host
            and last.cluster is cluster
        ):
            hist = last.hist
        else:
            key = (cluster, host, port, status_class)
            found = self._endpoints.get(key)
            if found is None:
                found = self._endpoints[key] = _Histogram()
            hist = last.hist = found
            last.endpoint = None  # of another host and port, maybe
            last.cluster, last.host, last.port, last.status_class = (
                cluster,
                host,
                port,
                status_class,
            )
        hist.buckets[_bucket(seconds)] += 1
        hist.total += seconds

    def endpoint_answered(
        self, cluster: str, endpoint: Endpoint, code: int, seconds: float
    ) -> None:
        """:meth:`upstream_endpoint` for ``endpoint``'s host and port. Endpoints are frozen
        values: the same one as last time has the same ones, which are not read again (an
        interpreted model's attributes, a generic lookup each when compiled)."""
        last = self._last_endpoint
        if last.endpoint is endpoint:
            host, port = last.host, last.port
        else:
            host, port = endpoint.host, endpoint.port
        self.upstream_endpoint(cluster, host, port, code, seconds)
        last.endpoint = endpoint  # whose host and port the last labels are now

    def route_error(self, destination: str, route: str, reason: str) -> None:
        """Count a failed outbound request (status >= 500 or no response) by ``reason``."""
        key = (destination, route, reason)
        self._route_errors[key] = self._route_errors.get(key, 0) + 1

    def http_view(self) -> list[tuple[HttpKey, list[int]]]:
        """A copy of the request histograms' bucket counts (telemetry reports)."""
        return [(k, list(h.buckets)) for k, h in list(self._http.items())]

    def endpoint_view(self) -> list[tuple[EndpointKey, list[int]]]:
        """A copy of the per-endpoint bucket counts (telemetry reports)."""
        return [(k, list(h.buckets)) for k, h in list(self._endpoints.items())]

    def route_error_view(self) -> list[tuple[RouteErrorKey, int]]:
        """A copy of the failed-request counts by destination, route and reason."""
        return list(self._route_errors.items())

    def tcp_view(self) -> list[tuple[TcpKey, tuple[int, int, int, int]]]:
        """A copy of the TCP records: (opened, closed, received, sent)."""
        return [(k, (r[0], r[1], r[2], r[3])) for k, r in list(self._tcp.items())]

    def upstream_error_view(self) -> list[tuple[tuple[str, str], int]]:
        """A copy of the upstream error counts by (cluster, reason)."""
        return list(self._upstream_errors.items())

    def authz_view(self) -> list[tuple[str, tuple[int, ...]]]:
        """A copy of the access-decision counts by listener."""
        return [(k, tuple(v)) for k, v in list(self._authz.items())]

    @property
    def snapshot_version(self) -> int:
        """Version of the snapshot in service (0 before the first)."""
        return self._snapshot_version

    def tcp_opened(self, direction: str, source: str, destination: str) -> None:
        """Count a proxied TCP connection that was established."""
        rec = self._tcp.get((direction, source, destination))
        if rec is None:
            rec = self._tcp[(direction, source, destination)] = [0, 0, 0, 0]
        rec[_OPENED] += 1

    def tcp_closed(
        self, direction: str, source: str, destination: str, received: int, sent: int
    ) -> None:
        """Count a proxied TCP connection that ended, with the bytes it moved."""
        rec = self._tcp.get((direction, source, destination))
        if rec is None:
            rec = self._tcp[(direction, source, destination)] = [0, 0, 0, 0]
        rec[_CLOSED] += 1
        rec[_RECEIVED] += received
        rec[_SENT] += sent

    def downstream_opened(self, listener: str) -> None:
        """A downstream connection was accepted on ``listener``."""
        rec = self._downstream.get(listener)
        if rec is None:
            rec = self._downstream[listener] = [0, 0]
        rec[0] += 1
        rec[1] += 1

    def downstream_closed(self, listener: str) -> None:
        """A downstream connection accepted on ``listener`` ended."""
        rec = self._downstream.get(listener)
        if rec is None:
            rec = self._downstream[listener] = [0, 0]
        rec[0] -= 1

    def listener_limit_event(self, listener: str, event: str) -> None:
        """A connection-level limit acted on ``listener`` (``over_limit``, ``idle_evicted``,
        ``first_byte_timeout``, ``accept_failed``)."""
        key = (listener, event)
        self._limit_events[key] = self._limit_events.get(key, 0) + 1

    def upstream_error(self, cluster: str, reason: str) -> None:
        """Count a failure talking to ``cluster`` (``connect_failed``, ``timeout``, ...)."""
        key = (cluster, reason)
        self._upstream_errors[key] = self._upstream_errors.get(key, 0) + 1

    def snapshot_applied(self, version: int) -> None:
        """A snapshot passed validation and is now in service."""
        self._snapshot_version = version
        self._snapshot_applied += 1

    def snapshot_rejected(self) -> None:
        """A snapshot failed validation (and was NACKed)."""
        self._snapshot_rejected += 1

    def registry_event(self, event: str) -> None:
        """Count a self-registration event (``registered``, ``errors``, ``lost``, ...)."""
        self._registry[event] = self._registry.get(event, 0) + 1

    def authz_counters(self, listener: str) -> list[int]:
        """The access-decision counts of ``listener``, indexed by ``AUTHZ_*``.

        The list is the live record: the inbound guard keeps it and bumps a slot per
        decision, so counting costs one int increment (and survives snapshot swaps).
        """
        rec = self._authz.get(listener)
        if rec is None:
            rec = self._authz[listener] = [0] * len(AUTHZ_ACTIONS)
        return rec

    def as_json(self) -> dict[str, object]:
        """Flat, Envoy-style ``dotted.name -> number`` view for the admin ``/stats`` endpoint."""
        out: dict[str, object] = {
            "snapshot.version": self._snapshot_version,
            "snapshot.updates.applied": self._snapshot_applied,
            "snapshot.updates.rejected": self._snapshot_rejected,
        }
        for (direction, src, dst, route, method, code), hist in list(self._http.items()):
            prefix = f"http.{direction}.{src}.{dst}.{route}.{method}.{code}"
            out[f"{prefix}.requests"] = sum(hist.buckets)
            out[f"{prefix}.duration_seconds_sum"] = hist.total
        for (direction, src, dst), rec in list(self._tcp.items()):
            prefix = f"tcp.{direction}.{src}.{dst}"
            out[f"{prefix}.connections_opened"] = rec[_OPENED]
            out[f"{prefix}.connections_closed"] = rec[_CLOSED]
            out[f"{prefix}.received_bytes"] = rec[_RECEIVED]
            out[f"{prefix}.sent_bytes"] = rec[_SENT]
        for listener, (active, total) in list(self._downstream.items()):
            out[f"listener.{listener}.downstream_connections_active"] = active
            out[f"listener.{listener}.downstream_connections_total"] = total
        for (listener, event), count in list(self._limit_events.items()):
            out[f"listener.{listener}.limits.{event}"] = count
        for (cluster, reason), count in list(self._upstream_errors.items()):
            out[f"cluster.{cluster}.upstream_errors.{reason}"] = count
        for event, count in list(self._registry.items()):
            out[f"registry.{event}"] = count
        for listener, counts in list(self._authz.items()):
            for action, count in zip(AUTHZ_ACTIONS, counts, strict=True):
                out[f"authz.{listener}.{action}"] = count
        return dict(sorted(out.items()))


def _no_expiry() -> float | None:
    return None
