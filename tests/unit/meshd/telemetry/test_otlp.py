"""Spans from finished exchanges and their OTLP/HTTP JSON encoding."""

from __future__ import annotations

import json
import random

import pytest

from meshd.context import ExchangeRecord
from meshd.http.tracing import next_traceparent
from meshd.telemetry.otlp import KIND_CLIENT, KIND_SERVER, encode_spans, span_from_record

pytestmark = pytest.mark.timeout(30)


def record(
    direction: str, incoming: bytes | None, outgoing: bytes | None, code: int = 200
) -> ExchangeRecord:
    return ExchangeRecord(
        direction=direction,
        source="web",
        destination="api",
        route="api-v1",
        method="GET",
        target=b"/users/7?x=1",
        code=code,
        start=0.0,
        seconds=0.25,
        endpoint="127.0.0.1:9000",
        peer_identity="spiffe://mesh.local/ns/default/svc/web",
        traceparent_in=incoming,
        traceparent_out=outgoing,
        retries=1,
        error="",
    )


def test_two_hops_link_parent_and_child() -> None:
    rng = random.Random(7)
    # The client sidecar starts the trace (sampled), the server sidecar continues it.
    client_out = next_traceparent(None, 1.0, rng)
    server_out = next_traceparent(client_out, 0.0, rng)
    client = span_from_record(record("outbound", None, client_out), end_wall=100.0, service="web")
    server = span_from_record(
        record("inbound", client_out, server_out), end_wall=100.0, service="api"
    )
    assert client is not None and server is not None
    assert client.trace_id == server.trace_id == client_out[3:35].decode()
    assert client.parent_span_id == ""
    assert server.parent_span_id == client.span_id == client_out[36:52].decode()
    assert server.span_id == server_out[36:52].decode()
    assert client.kind == KIND_CLIENT and server.kind == KIND_SERVER
    assert client.end_ns - client.start_ns == 250_000_000


def test_no_forwarded_traceparent_no_span() -> None:
    assert span_from_record(record("outbound", None, None), end_wall=1.0, service="web") is None


def test_encoding_follows_the_otlp_json_mapping() -> None:
    out = next_traceparent(None, 1.0, random.Random(1))
    span = span_from_record(record("outbound", None, out, code=503), end_wall=5.0, service="web")
    assert span is not None
    doc = encode_spans([span], resource=[("service.name", "web")], scope_version="0.1.0")
    # JSON-serializable as is.
    doc = json.loads(json.dumps(doc))
    [rs] = doc["resourceSpans"]
    assert rs["resource"]["attributes"] == [
        {"key": "service.name", "value": {"stringValue": "web"}}
    ]
    [ss] = rs["scopeSpans"]
    assert ss["scope"] == {"name": "meshd", "version": "0.1.0"}
    [s] = ss["spans"]
    assert s["traceId"] == span.trace_id and len(s["traceId"]) == 32
    assert s["spanId"] == span.span_id and len(s["spanId"]) == 16
    assert "parentSpanId" not in s
    assert s["kind"] == 3
    # 64-bit integers are decimal strings in OTLP JSON.
    assert s["startTimeUnixNano"] == str(span.start_ns)
    assert s["endTimeUnixNano"] == "5000000000"
    assert s["status"] == {"code": 2}
    attrs = {a["key"]: a["value"] for a in s["attributes"]}
    assert attrs["http.response.status_code"] == {"intValue": "503"}
    assert attrs["url.path"] == {"stringValue": "/users/7"}
    assert attrs["meshd.route"] == {"stringValue": "api-v1"}
    assert attrs["meshd.retries"] == {"intValue": "1"}
    assert attrs["meshd.upstream_endpoint"] == {"stringValue": "127.0.0.1:9000"}
    assert attrs["meshd.peer_identity"] == {"stringValue": "spiffe://mesh.local/ns/default/svc/web"}
