"""Wire models of the sidecar's telemetry report: ``POST /v1/telemetry/{proxy_id}``.

A sidecar sends one :class:`TelemetryReport` about once a second (push or TLS listener, its
sidecar token, like its snapshot long-poll). Counts are deltas since its previous report;
gauges (snapshot version, certificate expiry, ejected endpoints) are current values.
controld answers :class:`TelemetryAck`: the taps the sidecar should sample for now.

Series are capped per report (:data:`MAX_SERIES`); a sidecar drops the ones beyond and counts
them (``dropped_series``), and controld refuses a report over the caps (422).
"""

from __future__ import annotations

from pydantic import Field

from meshcore.api.base import Answer, Request
from meshcore.api.telemetry import TapEvent, TapFilter

__all__ = [
    "LATENCY_BOUNDS_MS",
    "MAX_SERIES",
    "MAX_TAP_EVENTS",
    "ActiveTap",
    "EndpointSeries",
    "HttpSeries",
    "PolicyCounts",
    "SidecarTapEvent",
    "TcpSeries",
    "TelemetryAck",
    "TelemetryReport",
    "telemetry_path",
]

#: Upper bounds (milliseconds, inclusive) of the latency histogram buckets; one more bucket
#: counts everything above the last bound. meshd's request histogram uses the same bounds.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    0.5,
    1,
    2.5,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
)
_NBUCKETS = len(LATENCY_BOUNDS_MS) + 1
#: Most series of each kind (http, endpoints, tcp) in one report.
MAX_SERIES = 256
#: Most tap events in one report.
MAX_TAP_EVENTS = 200
_NAME = Field(max_length=256)


def telemetry_path(proxy_id: str) -> str:
    """``/v1/telemetry/{proxy_id}`` (``proxy_id`` must already be a safe path segment)."""
    return f"/v1/telemetry/{proxy_id}"


class _Counted(Request):
    #: Requests finished since the last report.
    requests: int = Field(default=0, ge=0)
    #: Failed ones (status >= 500 or no response) by reason (``x-meshd-error`` reason, else
    #: ``http_5xx`` / ``no_response``).
    errors: dict[str, int] = Field(default_factory=dict, max_length=32)
    #: Latency histogram: counts per :data:`LATENCY_BOUNDS_MS` bucket, plus the overflow one.
    latency: tuple[int, ...] = Field(default=(0,) * _NBUCKETS, min_length=_NBUCKETS)

    @property
    def error_count(self) -> int:
        """Sum of :attr:`errors`."""
        return sum(self.errors.values())


class HttpSeries(_Counted):
    """Outbound HTTP requests of this sidecar to ``destination`` on ``route``."""

    destination: str = _NAME
    route: str = _NAME
    #: The destination's cluster originates mutual TLS.
    mtls: bool = False


class EndpointSeries(_Counted):
    """Outbound HTTP requests to one endpoint of ``destination``."""

    destination: str = _NAME
    cluster: str = _NAME
    endpoint: str = _NAME


class TcpSeries(Request):
    """Outbound TCP connections of this sidecar to ``destination``."""

    destination: str = _NAME
    opened: int = Field(default=0, ge=0)
    closed: int = Field(default=0, ge=0)
    #: Connections that failed (upstream connect errors of the destination's cluster).
    failed: int = Field(default=0, ge=0)
    bytes_in: int = Field(default=0, ge=0)
    bytes_out: int = Field(default=0, ge=0)
    mtls: bool = False


class PolicyCounts(Request):
    """Policy events since the last report."""

    retries: int = Field(default=0, ge=0)
    overflows: int = Field(default=0, ge=0)
    ejections: int = Field(default=0, ge=0)
    rate_limited: int = Field(default=0, ge=0)
    denied: int = Field(default=0, ge=0)
    health_check_failures: int = Field(default=0, ge=0)


class SidecarTapEvent(TapEvent):
    """A sampled request, as the sidecar reports it for ``tap_id``."""

    model_config = Request.model_config
    tap_id: str = Field(max_length=64)


class TelemetryReport(Request):
    """Body of ``POST /v1/telemetry/{proxy_id}``."""

    service: str = _NAME
    #: Increments by one per report (a gap: reports were lost).
    seq: int = Field(ge=0)
    snapshot_version: int | None = None
    #: Workload certificate ``not_after`` (Unix seconds); None without a certificate.
    cert_not_after: float | None = None
    http: tuple[HttpSeries, ...] = Field(default=(), max_length=MAX_SERIES)
    endpoints: tuple[EndpointSeries, ...] = Field(default=(), max_length=MAX_SERIES)
    tcp: tuple[TcpSeries, ...] = Field(default=(), max_length=MAX_SERIES)
    counts: PolicyCounts = Field(default_factory=PolicyCounts)
    #: Endpoints ejected now (``cluster/host:port``).
    ejected_endpoints: tuple[str, ...] = Field(default=(), max_length=MAX_SERIES)
    #: Series dropped over :data:`MAX_SERIES` since the sidecar started.
    dropped_series: int = Field(default=0, ge=0)
    tap_events: tuple[SidecarTapEvent, ...] = Field(default=(), max_length=MAX_TAP_EVENTS)


class ActiveTap(Answer):
    """A tap the sidecar samples requests for, until ``remaining_s`` from now."""

    id: str
    filter: TapFilter
    max_events_per_s: int
    remaining_s: float


class TelemetryAck(Answer):
    """Answer of ``POST /v1/telemetry/{proxy_id}``."""

    taps: tuple[ActiveTap, ...] = ()
