"""Tests for meshd.stats: raw counters rendered through a per-daemon metrics view."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from meshcore.model import Endpoint
from meshd.exposition import TextWriter
from meshd.metrics import MetricsView, write_meshd
from meshd.stats import BUCKETS, Stats

HTTP = ("outbound", "web", "api", "default", "GET", 200)


def samples(view: MetricsView) -> list[Sample]:
    text = view.render().decode()
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def value(view: MetricsView, name: str, **labels: str) -> float:
    found = [s.value for s in samples(view) if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def http_labels(method: str = "GET", code: str = "200") -> dict[str, str]:
    return {
        "direction": "outbound",
        "source": "web",
        "destination": "api",
        "route": "default",
        "method": method,
        "code": code,
    }


def test_requests_total_and_histogram() -> None:
    stats = Stats()
    view = MetricsView(stats)
    for seconds in (0.0001, 0.0005, 0.003, 0.3, 7.0, 60.0):
        stats.http_request(*HTTP, seconds)
    stats.http_request("outbound", "web", "api", "default", "GET", 503, 0.02)

    assert value(view, "meshd_requests_total", **http_labels()) == 6
    assert value(view, "meshd_requests_total", **http_labels(code="503")) == 1

    buckets = {
        s.labels["le"]: s.value
        for s in samples(view)
        if s.name == "meshd_request_duration_seconds_bucket"
        and {k: v for k, v in s.labels.items() if k != "le"} == http_labels()
    }
    assert len(buckets) == len(BUCKETS) + 1
    ordered = sorted(buckets.items(), key=lambda kv: float(kv[0]))
    counts = [v for _, v in ordered]
    assert counts == sorted(counts), "buckets must be cumulative"
    # Bounds are inclusive: 0.0005 lands in the 0.0005 bucket.
    assert buckets["0.0005"] == 2
    assert buckets["0.005"] == 3
    assert buckets["0.5"] == 4
    assert buckets["10.0"] == 5
    assert buckets["+Inf"] == 6
    count = value(view, "meshd_request_duration_seconds_count", **http_labels())
    assert count == buckets["+Inf"]
    total = value(view, "meshd_request_duration_seconds_sum", **http_labels())
    assert math.isclose(total, 0.0001 + 0.0005 + 0.003 + 0.3 + 7.0 + 60.0)


def test_method_normalised() -> None:
    stats = Stats()
    view = MetricsView(stats)
    for method in ("PATCH", "PROPFIND", "get", "BREW"):
        stats.http_request("inbound", "a", "b", "r", method, 200, 0.01)
    methods = {
        s.labels["method"]: s.value for s in samples(view) if s.name == "meshd_requests_total"
    }
    assert methods == {"PATCH": 1, "OTHER": 3}


def test_tcp_counters() -> None:
    stats = Stats()
    view = MetricsView(stats)
    stats.tcp_opened("inbound", "web", "db")
    stats.tcp_opened("inbound", "web", "db")
    stats.tcp_closed("inbound", "web", "db", received=100, sent=2000)
    labels = {"direction": "inbound", "source": "web", "destination": "db"}
    assert value(view, "meshd_tcp_connections_opened_total", **labels) == 2
    assert value(view, "meshd_tcp_connections_closed_total", **labels) == 1
    assert value(view, "meshd_tcp_received_bytes_total", **labels) == 100
    assert value(view, "meshd_tcp_sent_bytes_total", **labels) == 2000


def test_downstream_upstream_and_snapshot() -> None:
    stats = Stats()
    view = MetricsView(stats)
    for _ in range(3):
        stats.downstream_opened("outbound_http")
    stats.downstream_closed("outbound_http")
    stats.upstream_error("api", "connect_failed")
    stats.upstream_error("api", "connect_failed")
    stats.upstream_error("api", "timeout")
    stats.snapshot_applied(7)
    stats.snapshot_applied(9)
    stats.snapshot_rejected()

    assert value(view, "meshd_downstream_connections_active", listener="outbound_http") == 2
    assert value(view, "meshd_downstream_connections_total", listener="outbound_http") == 3
    errors = "meshd_upstream_errors_total"
    assert value(view, errors, cluster="api", reason="connect_failed") == 2
    assert value(view, errors, cluster="api", reason="timeout") == 1
    assert value(view, "meshd_snapshot_version") == 9
    assert value(view, "meshd_snapshot_updates_total", result="applied") == 2
    assert value(view, "meshd_snapshot_updates_total", result="rejected") == 1


def test_pool_stats_and_process_metrics() -> None:
    def pools() -> list[tuple[str, str, int, int]]:
        return [("api", "10.0.0.1:8080", 3, 5), ("db", "10.0.0.2:5432", 0, 1)]

    view = MetricsView(Stats(), pools)
    gauge = "meshd_upstream_pool_connections"
    assert value(view, gauge, cluster="api", endpoint="10.0.0.1:8080", state="active") == 3
    assert value(view, gauge, cluster="api", endpoint="10.0.0.1:8080", state="idle") == 5
    assert value(view, gauge, cluster="db", endpoint="10.0.0.2:5432", state="idle") == 1
    names = {s.name for s in samples(view)}
    assert "process_resident_memory_bytes" in names


def test_registries_independent() -> None:
    a, b = Stats(), Stats()
    view_a, view_b = MetricsView(a), MetricsView(b)
    a.http_request(*HTTP, 0.01)
    a.downstream_opened("l")
    assert value(view_a, "meshd_requests_total", **http_labels()) == 1
    assert not [s for s in samples(view_b) if s.name == "meshd_requests_total"]
    assert not [s for s in samples(view_b) if s.name == "meshd_downstream_connections_total"]


def test_meshd_families_alone_have_only_meshd_metrics() -> None:
    out = TextWriter()
    write_meshd(out, Stats())
    text = out.body().decode()
    names = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert names == {
        "meshd_snapshot_version",
        "meshd_snapshot_updates_total",
    }


def test_as_json_flat() -> None:
    stats = Stats()
    stats.http_request(*HTTP, 0.25)
    stats.http_request(*HTTP, 0.25)
    stats.tcp_opened("inbound", "web", "db")
    stats.tcp_closed("inbound", "web", "db", 10, 20)
    stats.downstream_opened("l1")
    stats.upstream_error("api", "reset")
    stats.snapshot_applied(3)
    out = stats.as_json()
    assert out["http.outbound.web.api.default.GET.200.requests"] == 2
    assert out["http.outbound.web.api.default.GET.200.duration_seconds_sum"] == 0.5
    assert out["tcp.inbound.web.db.received_bytes"] == 10
    assert out["tcp.inbound.web.db.sent_bytes"] == 20
    assert out["listener.l1.downstream_connections_active"] == 1
    assert out["cluster.api.upstream_errors.reset"] == 1
    assert out["snapshot.version"] == 3
    assert all(isinstance(v, int | float) for v in out.values())
    assert list(out) == sorted(out)


def test_requests_alternating_labels_count_in_their_own_histograms() -> None:
    """The last labels' histogram is reused only for the same labels: equal strings that are
    other objects, another code or route, each request counts where its labels say."""
    stats = Stats()
    route = "default"
    other_route = "".join(["def", "ault"])  # equal, not the same object
    assert other_route is not route
    calls = [
        ("outbound", "web", "api", route, "GET", 200),
        ("outbound", "web", "api", route, "GET", 200),
        ("outbound", "web", "api", route, "GET", 503),
        ("outbound", "web", "api", other_route, "GET", 200),
        ("outbound", "web", "api", "other", "GET", 200),
        ("outbound", "web", "db", route, "GET", 200),
        ("inbound", "web", "api", route, "GET", 200),
        ("outbound", "web", "api", route, "POST", 200),
        ("outbound", "web", "api", route, "GET", 200),
    ]
    for labels in calls:
        stats.http_request(*labels, 0.001)
    counted = {key: sum(buckets) for key, buckets in stats.http_view()}
    assert counted == {
        ("outbound", "web", "api", "default", "GET", 200): 4,
        ("outbound", "web", "api", "default", "GET", 503): 1,
        ("outbound", "web", "api", "other", "GET", 200): 1,
        ("outbound", "web", "db", "default", "GET", 200): 1,
        ("inbound", "web", "api", "default", "GET", 200): 1,
        ("outbound", "web", "api", "default", "POST", 200): 1,
    }
    for cluster, host, port, code in [
        ("api", "10.0.0.1", 80, 200),
        ("api", "10.0.0.1", 80, 204),
        ("api", "10.0.0.1", 80, 503),
        ("api", "10.0.0.1", 81, 200),
        ("api", "10.0.0.2", 80, 200),
        ("db", "10.0.0.1", 80, 200),
        ("api", "10.0.0.1", 80, 200),
    ]:
        stats.upstream_endpoint(cluster, host, port, code, 0.001)
    endpoints = {key: sum(buckets) for key, buckets in stats.endpoint_view()}
    assert endpoints == {
        ("api", "10.0.0.1", 80, 2): 3,
        ("api", "10.0.0.1", 80, 5): 1,
        ("api", "10.0.0.1", 81, 2): 1,
        ("api", "10.0.0.2", 80, 2): 1,
        ("db", "10.0.0.1", 80, 2): 1,
    }


def test_an_endpoints_answers_count_under_its_host_and_port() -> None:
    """endpoint_answered reads an endpoint's host and port once while it answers request
    after request; the labels stay its own when other endpoints or other labels come between."""
    stats = Stats()
    a = Endpoint(host="10.0.0.1", port=80)
    b = Endpoint(host="10.0.0.2", port=81)
    for endpoint, code in [(a, 200), (a, 200), (b, 200), (a, 503), (b, 200), (a, 200)]:
        stats.endpoint_answered("api", endpoint, code, 0.001)
    stats.upstream_endpoint("api", "10.0.0.3", 82, 200, 0.001)  # another, by host and port
    stats.endpoint_answered("api", a, 200, 0.001)
    stats.endpoint_answered("api", b, 200, 0.001)
    stats.upstream_endpoint("db", "10.0.0.4", 83, 200, 0.001)
    stats.endpoint_answered("api", b, 200, 0.001)
    endpoints = {key: sum(buckets) for key, buckets in stats.endpoint_view()}
    assert endpoints == {
        ("api", "10.0.0.1", 80, 2): 4,
        ("api", "10.0.0.1", 80, 5): 1,
        ("api", "10.0.0.2", 81, 2): 4,
        ("api", "10.0.0.3", 82, 2): 1,
        ("db", "10.0.0.4", 83, 2): 1,
    }
