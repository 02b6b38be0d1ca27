"""Wire models of controld's telemetry and tap API (what the dashboard reads).

Paths (admin listener, operator token):

* ``GET /v1/telemetry/services?window_s=60`` -> :class:`ServicesTelemetry`
* ``GET /v1/telemetry/routes?service=S&window_s=60`` -> :class:`RoutesTelemetry`
* ``GET /v1/telemetry/endpoints?service=S&window_s=60`` -> :class:`EndpointsTelemetry`
* ``GET /v1/telemetry/edges?window_s=60`` -> :class:`EdgesTelemetry`
* ``GET /v1/telemetry/instances?window_s=60`` -> :class:`InstancesTelemetry`
* ``POST /v1/taps`` (:class:`TapRequest`) -> :class:`TapCreated`
* ``GET /v1/taps/{id}/events?after=N&wait_s=S`` -> :class:`TapEvents`
* ``DELETE /v1/taps/{id}`` -> ``204``

Answers ignore unknown fields when parsed, so a newer controld can add fields without breaking
an older dashboard; requests reject them (a typo must not pass silently). Timestamps are Unix
seconds (float); durations are seconds unless the field name says ``_ms``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

# Re-exported (__all__): wire modules written before base.py import them from here.
from meshcore.api.base import Answer, Request

__all__ = [
    "DEFAULT_TAP_DURATION_S",
    "DEFAULT_TAP_RATE",
    "DEFAULT_WINDOW_S",
    "EDGES_PATH",
    "ENDPOINTS_PATH",
    "INSTANCES_PATH",
    "MAX_TAP_DURATION_S",
    "MAX_TAP_RATE",
    "MAX_WINDOW_S",
    "RESOLUTION_S",
    "ROUTES_PATH",
    "SERVICES_PATH",
    "TAPS_PATH",
    "Answer",
    "Edge",
    "EdgesTelemetry",
    "EndpointStats",
    "EndpointsTelemetry",
    "InstanceTelemetry",
    "InstancesTelemetry",
    "Request",
    "RouteStats",
    "RoutesTelemetry",
    "ServiceStats",
    "ServicesTelemetry",
    "TapCreated",
    "TapEvent",
    "TapEvents",
    "TapFilter",
    "TapRequest",
    "TrafficStats",
    "tap_events_path",
    "tap_path",
]

SERVICES_PATH = "/v1/telemetry/services"
ROUTES_PATH = "/v1/telemetry/routes"
ENDPOINTS_PATH = "/v1/telemetry/endpoints"
EDGES_PATH = "/v1/telemetry/edges"
INSTANCES_PATH = "/v1/telemetry/instances"
TAPS_PATH = "/v1/taps"

#: Width of one bucket of the rolling window (and of one point of ``rps_series``).
RESOLUTION_S = 10
#: ``window_s`` when the query names none.
DEFAULT_WINDOW_S = 60
#: Longest window controld keeps (and answers): 15 minutes.
MAX_WINDOW_S = 900
DEFAULT_TAP_RATE = 10
MAX_TAP_RATE = 100
DEFAULT_TAP_DURATION_S = 60
MAX_TAP_DURATION_S = 600


def tap_path(tap_id: str) -> str:
    """``/v1/taps/{id}`` (DELETE stops the tap)."""
    return f"{TAPS_PATH}/{tap_id}"


def tap_events_path(tap_id: str) -> str:
    """``/v1/taps/{id}/events`` (the long-poll of a tap's events)."""
    return f"{TAPS_PATH}/{tap_id}/events"


# --- traffic views -------------------------------------------------------------------------


class TrafficStats(Answer):
    """Request statistics of one row (service, route or endpoint) over the asked window.

    Counted by the calling sidecars (the outbound side), so connect failures, timeouts and
    the proxy's own 5xx answers (overflow, no healthy endpoint) are in it; requests that
    reach a service from outside the mesh (no calling sidecar) are not.
    """

    #: Requests finished in the window.
    requests: int = 0
    #: Of those, failed ones: status >= 500 or no response (a 429 or 403 is not a failure).
    errors: int = 0
    #: Requests per second over the window.
    rps: float = 0.0
    #: Share of non-failed requests, 0..1; None without traffic in the window.
    success_rate: float | None = None
    #: Latency percentiles in milliseconds (upper bound of the histogram bucket holding the
    #: percentile); None without traffic.
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    #: Requests per second of each ``resolution_s`` bucket of the window, oldest first.
    rps_series: tuple[float, ...] = ()
    #: Failed requests by reason (``http_5xx``, ``upstream_connect``, ``timeout``, ...).
    errors_by_reason: dict[str, int] = Field(default_factory=dict)


class ServiceStats(TrafficStats):
    """A destination service's traffic (all callers, all routes)."""

    service: str


class RouteStats(TrafficStats):
    """One route's traffic towards ``service`` (the route's name as the policy gives it)."""

    service: str
    route: str


class EndpointStats(TrafficStats):
    """One upstream endpoint's traffic: an instance of the destination service."""

    service: str
    #: ``host:port`` the callers connect to.
    endpoint: str
    #: The instance's proxy id when controld knows it (a registered sidecar at that address).
    proxy_id: str | None = None


class _Window(Answer):
    #: When controld computed the answer (Unix seconds).
    generated_at: float
    window_s: int
    resolution_s: int = RESOLUTION_S


class ServicesTelemetry(_Window):
    """Answer of ``GET /v1/telemetry/services``: one row per destination service seen."""

    services: tuple[ServiceStats, ...] = ()


class RoutesTelemetry(_Window):
    """Answer of ``GET /v1/telemetry/routes?service=S``: one row per route of ``S``."""

    service: str
    routes: tuple[RouteStats, ...] = ()


class EndpointsTelemetry(_Window):
    """Answer of ``GET /v1/telemetry/endpoints?service=S``: one row per endpoint of ``S``."""

    service: str
    endpoints: tuple[EndpointStats, ...] = ()


# --- topology ------------------------------------------------------------------------------


class Edge(Answer):
    """A hop of the service graph over the window: ``source`` calls ``destination``."""

    source: str
    destination: str
    protocol: Literal["http", "tcp"]
    #: Requests per second (http) or connection attempts per second (tcp).
    rps: float = 0.0
    #: Share of failed requests (http) or connection attempts (tcp), 0..1; None without traffic.
    error_rate: float | None = None
    #: Every hop in the window was mutually authenticated TLS.
    mtls: bool = False
    #: Bytes per second both ways (tcp; 0 for http).
    bytes_per_s: float = 0.0


class EdgesTelemetry(_Window):
    """Answer of ``GET /v1/telemetry/edges``."""

    edges: tuple[Edge, ...] = ()


# --- instances -----------------------------------------------------------------------------


class InstanceTelemetry(Answer):
    """What one sidecar last told controld, plus its counters summed over the window."""

    proxy_id: str
    service: str
    #: The snapshot version the sidecar has applied (None: none yet).
    snapshot_version: int | None = None
    #: Last telemetry report received (Unix seconds).
    last_contact: float
    #: The sidecar's workload certificate ``not_after`` (Unix seconds); None: no certificate.
    cert_not_after: float | None = None
    retries: int = 0
    overflows: int = 0
    ejections: int = 0
    rate_limited: int = 0
    denied: int = 0
    health_check_failures: int = 0
    #: Upstream endpoints (``cluster/host:port``) the sidecar currently has ejected.
    ejected_endpoints: tuple[str, ...] = ()
    #: Series the sidecar dropped from its reports over the size cap (since it started).
    dropped_series: int = 0


class InstancesTelemetry(_Window):
    """Answer of ``GET /v1/telemetry/instances``: one row per sidecar seen in the window."""

    instances: tuple[InstanceTelemetry, ...] = ()


# --- tap -----------------------------------------------------------------------------------


class TapFilter(Request):
    """Which requests a tap samples; every field given must match (none given: all)."""

    #: The calling service.
    source: str | None = None
    #: The called service.
    destination: str | None = None
    path_prefix: str | None = Field(default=None, max_length=1024)
    method: str | None = Field(default=None, max_length=32)
    #: Exact response status (0: no response).
    status: int | None = Field(default=None, ge=0, le=999)


class TapRequest(Request):
    """Body of ``POST /v1/taps``."""

    filter: TapFilter = Field(default_factory=TapFilter)
    #: Most events per second the tap delivers (over all sidecars).
    max_events_per_s: int = Field(default=DEFAULT_TAP_RATE, ge=1, le=MAX_TAP_RATE)
    #: The tap stops by itself after this long.
    duration_s: int = Field(default=DEFAULT_TAP_DURATION_S, ge=1, le=MAX_TAP_DURATION_S)


class TapCreated(Answer):
    """Answer of ``POST /v1/taps``."""

    id: str
    expires_at: float


class TapEvent(Answer):
    """One sampled request."""

    #: When the request finished (Unix seconds).
    ts: float
    source: str
    destination: str
    route: str = ""
    #: Upstream endpoint ``host:port`` ("" when none was reached).
    endpoint: str = ""
    method: str
    path: str
    #: Response status (0: no response reached the caller).
    status: int
    latency_ms: float
    #: The caller's SPIFFE identity as the sidecar saw it ("" when not authenticated).
    identity: str = ""
    #: W3C trace id (32 hex digits; "" when none).
    trace_id: str = ""
    #: ``outbound`` (seen by the caller's sidecar) or ``inbound`` (the callee's sidecar).
    direction: str = ""


class TapEvents(Answer):
    """Answer of ``GET /v1/taps/{id}/events?after=N``: events numbered after ``N``."""

    events: tuple[TapEvent, ...] = ()
    #: Pass as ``after`` in the next poll.
    next: int
    #: The tap has ended (expired or deleted) and every event was delivered.
    done: bool = False
