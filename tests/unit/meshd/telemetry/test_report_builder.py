"""Telemetry reports from the sidecar's counters: deltas, what is left out, the series cap."""

from __future__ import annotations

import pytest

from meshd.stats import AUTHZ_DENY, Stats
from meshd.telemetry.delta import ClusterFacts, ReportBuilder

pytestmark = pytest.mark.timeout(30)

FACTS = ClusterFacts(
    services={"api": "api", "db": "db"}, mtls=frozenset({"api"}), local=frozenset({"local_app"})
)


def test_deltas_between_reports() -> None:
    stats = Stats()
    builder = ReportBuilder(stats, "web")
    for code in (200, 200, 503):
        stats.http_request("outbound", "web", "api", "r1", "GET", code, 0.004)
        stats.upstream_endpoint("api", "10.0.0.1", 80, code, 0.004)
    stats.route_error("api", "r1", "http_5xx")
    stats.http_request("inbound", "x", "web", "", "GET", 200, 0.001)  # inbound: not reported
    stats.upstream_endpoint("local_app", "127.0.0.1", 8080, 200, 0.001)  # the app: not reported
    stats.policy.inc("meshd_upstream_retries", "api", "5xx", n=2)
    stats.authz_counters("inbound")[AUTHZ_DENY] += 3
    stats.snapshot_applied(4)
    first = builder.build(FACTS, cert_not_after=99.0, ejected=["api/10.0.0.2:80"])
    assert first.seq == 0 and first.snapshot_version == 4 and first.cert_not_after == 99.0
    [h] = first.http
    assert (h.destination, h.route, h.requests, h.errors, h.mtls) == (
        "api",
        "r1",
        3,
        {"http_5xx": 1},
        True,
    )
    assert h.latency[3] == 3  # <= 5 ms
    [ep] = first.endpoints
    assert (ep.endpoint, ep.requests, ep.errors) == ("10.0.0.1:80", 3, {"http_5xx": 1})
    assert first.counts.retries == 2 and first.counts.denied == 3
    assert first.ejected_endpoints == ("api/10.0.0.2:80",)

    # Nothing new: nothing but the counters' zeros.
    second = builder.build(FACTS)
    assert second.seq == 1 and second.http == () and second.endpoints == ()
    assert second.counts.retries == 0

    stats.http_request("outbound", "web", "api", "r1", "POST", 200, 0.2)
    stats.tcp_opened("outbound", "web", "db")
    stats.tcp_closed("outbound", "web", "db", 100, 50)
    stats.upstream_error("db", "connect_failed")
    third = builder.build(FACTS)
    [h] = third.http
    assert h.requests == 1 and h.errors == {} and h.latency[8] == 1
    [t] = third.tcp
    assert (t.destination, t.opened, t.closed, t.failed, t.bytes_in, t.bytes_out, t.mtls) == (
        "db",
        1,
        1,
        1,
        100,
        50,
        False,
    )


def test_series_cap_drops_and_counts() -> None:
    stats = Stats()
    builder = ReportBuilder(stats, "web", max_series=3)
    for i in range(5):
        stats.http_request("outbound", "web", "api", f"r{i}", "GET", 200, 0.001)
    report = builder.build(FACTS)
    assert len(report.http) == 3
    assert report.dropped_series == 2
    # The report stays valid wire data (controld checks the same caps).
    assert report.model_validate_json(report.model_dump_json()) == report
