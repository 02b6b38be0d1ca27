"""One request/response pair: its bookkeeping, and its record in metrics and the access log."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Final

from meshcore.model import Endpoint
from meshd.context import ExchangeRecord, ProxyShared, now
from meshd.http.codec import RequestHead

if TYPE_CHECKING:
    from meshd.cluster.runtime import ClusterRuntime
    from meshd.http.config import HttpListenerConfig

METHODS: Final = {
    m.encode(): m
    for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT")
}


#: Last hex digit of trace flags with the ``sampled`` bit set.
_SAMPLED: Final = frozenset(b"13579bdfBDF")


@lru_cache(maxsize=1024)
def source_service(identity: bytes | None) -> str:
    """The service of a peer's SPIFFE ID (``spiffe://td/ns/N/svc/<service>``), else "unknown"."""
    if identity is None:
        return "unknown"
    _, marker, service = identity.rpartition(b"/svc/")
    if not marker or not service or b"/" in service:
        return "unknown"
    return service.decode("ascii", "replace")


class Exchange:
    """Book-keeping of one request/response pair."""

    __slots__ = (
        "body_done",
        "bytes_in",
        "bytes_out",
        "cluster",
        "code",
        "destination",
        "error",
        "head_sent",
        "ids",
        "request_id",
        "retries",
        "route",
        "source_identity",
        "start",
        "traceparent",
        "upstream",
    )

    def __init__(self, start: float) -> None:
        self.start = start
        self.code = 0
        self.route = ""
        self.destination = "unknown"
        self.error = ""
        self.head_sent = False
        self.body_done = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.request_id: bytes | None = None
        #: Ids drawn for the request (:func:`meshd.http.tracing.new_ids`; b"": none yet).
        self.ids = b""
        self.upstream: Endpoint | None = None
        #: The client's SPIFFE ID (inbound mTLS), else None.
        self.source_identity: bytes | None = None
        #: The cluster forwarded to (None before one was chosen).
        self.cluster: ClusterRuntime | None = None
        #: ``traceparent`` as forwarded upstream (None: not forwarded).
        self.traceparent: bytes | None = None
        #: Retries sent (tries beyond the first).
        self.retries = 0


def record(
    cfg: HttpListenerConfig, shared: ProxyShared, head: RequestHead | None, ex: Exchange
) -> None:
    """Count a finished exchange in the metrics and, when enabled, the access log."""
    method = METHODS.get(head.method, "OTHER") if head is not None else "OTHER"
    seconds = now() - ex.start
    if cfg.direction == "outbound":
        source, destination = cfg.local_service, ex.destination
    else:
        source, destination = source_service(ex.source_identity), cfg.local_service
    stats = shared.stats
    code = ex.code
    stats.http_request(cfg.direction, source, destination, ex.route, method, code, seconds)
    upstream = ex.upstream
    cluster = ex.cluster
    if upstream is not None and cluster is not None:
        stats.endpoint_answered(cluster.name, upstream, code, seconds)
    if (code >= 500 or code == 0) and cfg.direction == "outbound":
        stats.route_error(
            destination, ex.route, ex.error or ("http_5xx" if code else "no_response")
        )
    traceparent = ex.traceparent
    # One flag check each unless a tap is active or this trace is sampled (last bit of the
    # trace flags) and exported.
    traced = shared.tracer is not None and traceparent is not None and traceparent[-1] in _SAMPLED
    tap = shared.tap
    tapped = tap is not None and tap.wants(
        source, destination, method, code, head.target if head is not None else b""
    )
    if tapped or traced:
        _observe(
            cfg,
            shared,
            head,
            ex,
            source=source,
            destination=destination,
            method=method,
            seconds=seconds,
            tapped=tapped,
            traced=traced,
        )
    log = shared.access_log
    if not log.enabled:
        return
    log.log(
        direction=cfg.direction,
        listener=cfg.name,
        source=source,
        destination=destination,
        route=ex.route,
        method=method,
        path=head.target.decode("latin-1") if head is not None else "",
        authority=(head.host or b"").decode("latin-1") if head is not None else "",
        code=ex.code,
        duration_ms=round(seconds * 1000, 3),
        bytes_in=ex.bytes_in,
        bytes_out=ex.bytes_out,
        upstream=f"{ex.upstream.host}:{ex.upstream.port}" if ex.upstream else "",
        request_id=(ex.request_id or b"").decode("latin-1"),
        error=ex.error,
        trace_id=traceparent[3:35].decode("ascii") if traceparent is not None else "",
        span_id=traceparent[36:52].decode("ascii") if traceparent is not None else "",
        **(
            {"source_identity": ex.source_identity.decode("latin-1")}
            if ex.source_identity is not None
            else {}
        ),
    )


def _observe(
    cfg: HttpListenerConfig,
    shared: ProxyShared,
    head: RequestHead | None,
    ex: Exchange,
    *,
    source: str,
    destination: str,
    method: str,
    seconds: float,
    tapped: bool,
    traced: bool,
) -> None:
    """Hand the exchange to the active tap and the span recorder (sampled traces only)."""
    upstream = ex.upstream
    if cfg.direction == "inbound":
        peer = ex.source_identity.decode("latin-1") if ex.source_identity is not None else ""
    else:
        tls = ex.cluster.model.tls if ex.cluster is not None else None
        peer = tls.spiffe_id if tls is not None and not (upstream and upstream.plaintext) else ""
    rec = ExchangeRecord(
        direction=cfg.direction,
        source=source,
        destination=destination,
        route=ex.route,
        method=method,
        target=head.target if head is not None else b"",
        code=ex.code,
        start=ex.start,
        seconds=seconds,
        endpoint=f"{upstream.host}:{upstream.port}" if upstream is not None else "",
        peer_identity=peer,
        traceparent_in=head.traceparent if head is not None else None,
        traceparent_out=ex.traceparent,
        retries=ex.retries,
        error=ex.error,
    )
    if tapped and shared.tap is not None:
        shared.tap.observe(rec)
    if traced and shared.tracer is not None:
        shared.tracer.observe(rec)
