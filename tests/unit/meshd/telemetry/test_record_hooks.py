"""What a finished exchange leaves behind: endpoint counters, error reasons, trace ids in the
access log, spans for sampled traces only, and the new Prometheus families."""

from __future__ import annotations

import io
import json
import random
import types
from typing import Any, cast

import pytest
import structlog

from meshcore.api.report import ActiveTap
from meshcore.api.telemetry import TapFilter
from meshcore.model import Endpoint
from meshd.accesslog import AccessLog
from meshd.context import ExchangeRecord, ProxyShared, now
from meshd.http.codec import RequestHead
from meshd.http.exchange import Exchange, record
from meshd.http.tracing import next_traceparent
from meshd.metrics import MetricsView
from meshd.stats import Stats
from meshd.telemetry.tap import TapSampler

pytestmark = pytest.mark.timeout(30)

CFG: Any = types.SimpleNamespace(direction="outbound", local_service="web", name="web-out")


class Recorder:
    def __init__(self) -> None:
        self.records: list[ExchangeRecord] = []

    def observe(self, rec: ExchangeRecord) -> None:
        self.records.append(rec)


def exchange(code: int, traceparent: bytes | None, error: str = "") -> Exchange:
    ex = Exchange(now())
    ex.code, ex.route, ex.destination, ex.error = code, "r", "api", error
    ex.upstream = Endpoint(host="10.0.0.1", port=8080)
    ex.cluster = cast(Any, types.SimpleNamespace(name="api", model=types.SimpleNamespace(tls=None)))
    ex.traceparent = traceparent
    return ex


def test_counters_trace_ids_and_spans() -> None:
    buf = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.WriteLogger(buf),
        processors=[structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(0),
    )
    stats = Stats()
    stats.cert_expiry = lambda: 1_900_000_000.0
    tracer = Recorder()
    shared = ProxyShared(
        stats=stats, access_log=AccessLog(enabled=True, sample_rate=1.0, logger=logger)
    )
    shared.tracer = tracer
    rng = random.Random(3)
    sampled = next_traceparent(None, 1.0, rng)
    unsampled = next_traceparent(None, 0.0, rng)
    record(CFG, shared, None, exchange(200, sampled))
    record(CFG, shared, None, exchange(200, unsampled))
    record(CFG, shared, None, exchange(503, None, "upstream_overflow"))
    record(CFG, shared, None, exchange(0, unsampled))
    # Only the sampled trace is recorded.
    assert [r.traceparent_out for r in tracer.records] == [sampled]
    assert tracer.records[0].endpoint == "10.0.0.1:8080"
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert lines[0]["trace_id"] == sampled[3:35].decode()
    assert lines[0]["span_id"] == sampled[36:52].decode()
    assert lines[2]["trace_id"] == "" and lines[2]["span_id"] == ""
    assert dict(stats.route_error_view()) == {
        ("api", "r", "upstream_overflow"): 1,
        ("api", "r", "no_response"): 1,
    }
    text = MetricsView(stats).render().decode()
    assert (
        'meshd_upstream_endpoint_requests_total{cluster="api",code_class="2xx",'
        'endpoint="10.0.0.1:8080"} 2.0'
    ) in text
    assert 'code_class="0xx"' in text and 'code_class="5xx"' in text
    assert "meshd_certificate_expiry_timestamp_seconds 1.9e+09" in text


def test_no_certificate_no_expiry_sample() -> None:
    text = MetricsView(Stats()).render().decode()
    assert "# TYPE meshd_certificate_expiry_timestamp_seconds gauge" in text
    assert "\nmeshd_certificate_expiry_timestamp_seconds " not in text


class CountingTap(TapSampler):
    """A tap sampler that counts the records made for it."""

    def __init__(self) -> None:
        super().__init__()
        self.records = 0

    def observe(self, record: ExchangeRecord) -> None:
        self.records += 1
        super().observe(record)


def test_a_tap_gets_a_record_only_for_a_request_it_keeps() -> None:
    shared = ProxyShared(stats=Stats(), access_log=AccessLog(enabled=False, sample_rate=0.0))
    tap = CountingTap()
    flt = TapFilter(destination="api", path_prefix="/orders")
    tap.set_taps([ActiveTap(id="t", filter=flt, max_events_per_s=1, remaining_s=60)])
    shared.tap = tap
    head = RequestHead()
    head.method, head.target = b"GET", b"/users/1"
    for _ in range(5):
        record(CFG, shared, head, exchange(200, None))
    assert tap.records == 0  # the filter says no: not even a record
    head.target = b"/orders/7"
    for _ in range(5):
        record(CFG, shared, head, exchange(200, None))
    assert tap.records == 1  # one token: the next ones are not looked at
    [event] = tap.take_events()
    assert (event.tap_id, event.path, event.destination, event.method) == (
        "t",
        "/orders/7",
        "api",
        "GET",
    )
    assert event.endpoint == "10.0.0.1:8080" and event.status == 200
