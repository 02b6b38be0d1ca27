"""Spans and their OTLP/HTTP JSON encoding (``POST /v1/traces``), without the OpenTelemetry SDK.

The encoding follows the OTLP JSON mapping of ``ExportTraceServiceRequest``
(opentelemetry-proto, ``opentelemetry/proto/collector/trace/v1``): field names in lowerCamelCase,
``traceId``/``spanId``/``parentSpanId`` as lower-case hex (not base64, an OTLP/JSON exception),
64-bit integers (times, ``intValue``) as decimal strings, enums (``kind``, ``status.code``) as
integers. Jaeger (>= 1.35) and the OpenTelemetry collector take it on their OTLP/HTTP port
(4318). Pure: values in, a JSON-ready dict out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from meshd.context import ExchangeRecord

__all__ = [
    "KIND_CLIENT",
    "KIND_SERVER",
    "STATUS_ERROR",
    "STATUS_UNSET",
    "Span",
    "encode_spans",
    "span_from_record",
]

#: ``Span.SpanKind`` values.
KIND_SERVER: Final = 2
KIND_CLIENT: Final = 3
#: ``Status.StatusCode`` values.
STATUS_UNSET: Final = 0
STATUS_ERROR: Final = 2

_TRACEPARENT = re.compile(rb"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")

Attribute = tuple[str, str | int | bool]


@dataclass(frozen=True, slots=True)
class Span:
    """One finished span of the proxy."""

    trace_id: str
    span_id: str
    #: "" for a root span.
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: tuple[Attribute, ...]
    error: bool


def span_from_record(rec: ExchangeRecord, *, end_wall: float, service: str) -> Span | None:
    """The span of a finished exchange whose forwarded ``traceparent`` is this proxy's span.

    The span id is the parent id the proxy sent upstream, so the next hop's span is its child;
    its parent is the span id of the ``traceparent`` received, when it is of the same trace.
    None when nothing was forwarded.
    """
    out = rec.traceparent_out
    if out is None:
        return None
    m = _TRACEPARENT.match(out)
    if m is None:
        return None
    trace_id = m.group(1).decode("ascii")
    parent = ""
    if rec.traceparent_in is not None:
        pm = _TRACEPARENT.match(rec.traceparent_in)
        if pm is not None and pm.group(1) == m.group(1):
            parent = pm.group(2).decode("ascii")
    end_ns = int(end_wall * 1e9)
    attrs: list[Attribute] = [
        ("meshd.direction", rec.direction),
        ("meshd.service", service),
        ("meshd.source", rec.source),
        ("meshd.destination", rec.destination),
        ("meshd.route", rec.route),
        ("http.request.method", rec.method),
        ("url.path", rec.target.split(b"?", 1)[0][:1024].decode("latin-1")),
        ("http.response.status_code", rec.code),
        ("meshd.retries", rec.retries),
    ]
    if rec.endpoint:
        attrs.append(("meshd.upstream_endpoint", rec.endpoint))
    if rec.peer_identity:
        attrs.append(("meshd.peer_identity", rec.peer_identity))
    if rec.error:
        attrs.append(("meshd.error", rec.error))
    inbound = rec.direction == "inbound"
    return Span(
        trace_id=trace_id,
        span_id=m.group(2).decode("ascii"),
        parent_span_id=parent,
        name=f"{'inbound' if inbound else 'outbound'} {rec.route or rec.destination}",
        kind=KIND_SERVER if inbound else KIND_CLIENT,
        start_ns=end_ns - int(rec.seconds * 1e9),
        end_ns=end_ns,
        attributes=tuple(attrs),
        error=rec.code >= 500 or rec.code == 0,
    )


def _value(value: str | int | bool) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    return {"stringValue": value}


def _attributes(attrs: tuple[Attribute, ...] | list[Attribute]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _value(v)} for k, v in attrs]


def encode_spans(
    spans: list[Span], *, resource: list[Attribute], scope_version: str = ""
) -> dict[str, Any]:
    """An ``ExportTraceServiceRequest`` in OTLP JSON: one resource (this sidecar), one scope."""
    encoded: list[dict[str, Any]] = []
    for s in spans:
        span: dict[str, Any] = {
            "traceId": s.trace_id,
            "spanId": s.span_id,
            "name": s.name,
            "kind": s.kind,
            "startTimeUnixNano": str(s.start_ns),
            "endTimeUnixNano": str(s.end_ns),
            "attributes": _attributes(s.attributes),
            "status": {"code": STATUS_ERROR if s.error else STATUS_UNSET},
        }
        if s.parent_span_id:
            span["parentSpanId"] = s.parent_span_id
        encoded.append(span)
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": _attributes(resource)},
                "scopeSpans": [
                    {"scope": {"name": "meshd", "version": scope_version}, "spans": encoded}
                ],
            }
        ]
    }
