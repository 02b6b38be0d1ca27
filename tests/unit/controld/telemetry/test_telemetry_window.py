"""The rolling window: merging reports, rates and percentiles, bucket ageing, memory caps."""

from __future__ import annotations

import pytest

from controld.telemetry.window import SLOTS, TelemetryWindow, WindowLimits, percentile_ms
from meshcore.api.report import (
    EndpointSeries,
    HttpSeries,
    PolicyCounts,
    TcpSeries,
    TelemetryReport,
)

pytestmark = pytest.mark.timeout(30)

T0 = 1_800_000_000.0  # a bucket boundary (divisible by 10)


def hist(**buckets: int) -> tuple[int, ...]:
    """A latency histogram: ``b3=5`` puts 5 requests in bucket 3 (<= 5 ms)."""
    out = [0] * 15
    for name, n in buckets.items():
        out[int(name[1:])] = n
    return tuple(out)


def report(service: str = "web", seq: int = 0, **fields: object) -> TelemetryReport:
    return TelemetryReport.model_validate({"service": service, "seq": seq, **fields})


def http(
    dst: str, route: str, n: int, errors: dict[str, int] | None = None, **kw: object
) -> HttpSeries:
    return HttpSeries.model_validate(
        {
            "destination": dst,
            "route": route,
            "requests": n,
            "errors": errors or {},
            "latency": hist(b3=n),
            **kw,
        }
    )


def test_percentile_is_the_bucket_upper_bound() -> None:
    assert percentile_ms([0] * 15, 0.5) is None
    h = list(hist(b0=50, b4=45, b9=5))
    assert percentile_ms(h, 0.50) == 0.5
    assert percentile_ms(h, 0.95) == 10
    assert percentile_ms(h, 0.99) == 500
    assert percentile_ms(list(hist(b14=1)), 0.5) == 20000


def test_services_sum_callers_and_routes() -> None:
    w = TelemetryWindow()
    w.ingest("web-1", report(http=[http("api", "a", 30, {"http_5xx": 3})]), T0 + 1)
    w.ingest("web-2", report(http=[http("api", "b", 70)]), T0 + 2)
    w.ingest("web-1", report(seq=1, http=[http("db", "", 5)]), T0 + 11)
    out = w.services(60, T0 + 20)
    assert out.window_s == 60 and out.resolution_s == 10
    rows = {s.service: s for s in out.services}
    api = rows["api"]
    assert api.requests == 100 and api.errors == 3
    assert api.success_rate == pytest.approx(0.97)
    assert api.errors_by_reason == {"http_5xx": 3}
    assert api.p50_ms == 5
    assert len(api.rps_series) == 6
    # Oldest first: the bucket of T0 is the fourth of the six (T0-30 .. T0+20).
    assert api.rps_series[3] == pytest.approx(10.0)
    assert api.rps_series[4] == 0
    # 100 requests over the 50 s + 1 s the window's buckets have covered so far.
    assert api.rps == pytest.approx(100 / 51)
    assert rows["db"].requests == 5


def test_no_traffic_means_no_rate() -> None:
    w = TelemetryWindow()
    w.ingest("web-1", report(http=[http("api", "a", 1)]), T0)
    # Two minutes later, a one-minute window has nothing.
    out = w.services(60, T0 + 120)
    assert out.services == ()


def test_routes_and_endpoints_of_one_service() -> None:
    w = TelemetryWindow()
    ep = EndpointSeries(
        destination="api",
        cluster="api",
        endpoint="10.0.0.1:8080",
        requests=4,
        errors={"no_response": 1},
        latency=hist(b5=4),
    )
    w.ingest("web-1", report(http=[http("api", "a", 4), http("db", "x", 1)], endpoints=[ep]), T0)
    routes = w.routes("api", 60, T0 + 1)
    assert [r.route for r in routes.routes] == ["a"]
    eps = w.endpoints("api", 60, T0 + 1, owner={"10.0.0.1:8080": "api-1"}.get)
    [row] = eps.endpoints
    assert row.endpoint == "10.0.0.1:8080" and row.proxy_id == "api-1"
    assert row.errors == 1 and row.errors_by_reason == {"no_response": 1}
    assert row.p99_ms == 25


def test_edges_http_and_tcp_with_mtls() -> None:
    w = TelemetryWindow()
    tcp = TcpSeries(destination="db", opened=10, failed=1, bytes_in=600, bytes_out=400, mtls=True)
    w.ingest(
        "web-1",
        report(http=[http("api", "a", 20, {"timeout": 2}, mtls=True)], tcp=[tcp]),
        T0 + 9,
    )
    w.ingest("web-2", report(http=[http("api", "a", 10, mtls=False)]), T0 + 9)
    edges = {(e.source, e.destination, e.protocol): e for e in w.edges(10, T0 + 9).edges}
    api = edges[("web", "api", "http")]
    assert api.rps == pytest.approx(30 / 9)
    assert api.error_rate == pytest.approx(2 / 30)
    # One caller's hops were plaintext: the edge is not all mTLS.
    assert api.mtls is False
    db = edges[("web", "db", "tcp")]
    assert db.mtls is True and db.bytes_per_s == pytest.approx(1000 / 9)
    assert db.error_rate == pytest.approx(1 / 11)  # 10 opened, 1 failed to


def test_instances_counters_over_the_window_and_eviction() -> None:
    w = TelemetryWindow()
    counts = PolicyCounts(retries=2, denied=1)
    w.ingest(
        "web-1",
        report(
            counts=counts,
            snapshot_version=7,
            cert_not_after=T0 + 3600,
            ejected_endpoints=["api/10.0.0.1:8080"],
        ),
        T0,
    )
    w.ingest("web-1", report(seq=1, counts=counts, snapshot_version=8), T0 + 30)
    [inst] = w.instances(60, T0 + 31).instances
    assert inst.retries == 4 and inst.denied == 2
    assert inst.snapshot_version == 8 and inst.last_contact == T0 + 30
    # The one-bucket window sees only the last report's counts.
    [inst] = w.instances(10, T0 + 31).instances
    assert inst.retries == 2
    # Silent for longer than the kept window: forgotten.
    assert w.instances(60, T0 + 30 + 901).instances == ()


def test_buckets_older_than_the_window_are_dropped() -> None:
    w = TelemetryWindow()
    for i in range(200):
        w.ingest("web-1", report(seq=i, http=[http("api", "a", 1)]), T0 + i * 10)
    assert w.status_json()["buckets"] <= SLOTS
    out = w.services(900, T0 + 1990)
    assert out.services[0].requests == 90
    assert len(out.services[0].rps_series) == 90


def test_row_and_instance_caps_bound_memory() -> None:
    w = TelemetryWindow(WindowLimits(max_rows=5, max_instances=3))
    series = [http("api", f"r{i}", 1) for i in range(10)]
    w.ingest("web-1", report(http=series), T0)
    assert len(w.routes("api", 10, T0).routes) == 5
    assert w.dropped_rows == 5  # the routes over the cap (the one edge fits)
    for i in range(5):
        w.ingest(f"p{i}", report(), T0)
    assert w.status_json()["instances"] == 3
    assert w.refused_instances == 3
