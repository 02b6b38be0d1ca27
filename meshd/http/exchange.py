"""One request/response pair: its bookkeeping, and its record in metrics and the access log."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Final

from meshcore.model import Endpoint
from meshd.context import ProxyShared, now
from meshd.http.codec import RequestHead

if TYPE_CHECKING:
    from meshd.http.config import HttpListenerConfig

METHODS: Final = {
    m.encode(): m
    for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT")
}


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
        "code",
        "destination",
        "error",
        "head_sent",
        "request_id",
        "route",
        "source_identity",
        "start",
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
        self.upstream: Endpoint | None = None
        #: The client's SPIFFE ID (inbound mTLS), else None.
        self.source_identity: bytes | None = None


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
    shared.stats.http_request(
        cfg.direction, source, destination, ex.route, method, ex.code, seconds
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
        **(
            {"source_identity": ex.source_identity.decode("latin-1")}
            if ex.source_identity is not None
            else {}
        ),
    )
