"""Tests for meshd.exposition and meshd.metrics: the text meshd writes is what
prometheus-client wrote for the same counters, and Prometheus's parser reads it back.

``metrics_expected.txt`` is prometheus-client 0.26's ``generate_latest`` over the collectors
meshd had before it wrote the format itself (``MeshdCollector`` and ``PolicyCollector``,
main 59a1dc1), for the counters :func:`awkward_stats` records; it is kept as the reference.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from meshd.exposition import LabelNames, TextWriter, format_value
from meshd.metrics import MetricsView, write_meshd
from meshd.procmetrics import ProcessMetrics
from meshd.stats import AUTHZ_ALLOW, AUTHZ_DENY, BUCKETS, Stats

pytestmark = pytest.mark.timeout(30)

EXPECTED = Path(__file__).with_name("metrics_expected.txt")
#: Label values the format must escape or carry as they are.
AWKWARD = ('quo"te', "back\\slash", "new\nline", "café ✓ 名前", "", "tail\\")
#: The process families, as the parser names them (a counter without ``_total``), in order.
PROCESS_FAMILIES = [
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_cpu_seconds",
    "process_open_fds",
    "process_max_fds",
]


def awkward_stats() -> Stats:
    """Every ``meshd_*`` family with samples, the awkward label values among them."""
    stats = Stats()
    for i, odd in enumerate(AWKWARD):
        for seconds in (0.0001, 0.0005, 0.003, 0.3, 7.0, 60.0)[: i + 2]:
            stats.http_request("outbound", "web", odd, f"r{i}", "GET", 200, seconds)
        stats.http_request("inbound", odd, "api", "default", "BREW", 503, 0.1 + 0.2)
        stats.tcp_opened("inbound", odd, "db")
        stats.tcp_closed("inbound", odd, "db", received=1234567890 * (i + 1), sent=i)
        stats.downstream_opened(odd)
        stats.listener_limit_event(odd, "over_limit")
        stats.upstream_error(odd, "connect_failed")
        stats.authz_counters(odd)[AUTHZ_DENY] += i
        stats.policy.inc("meshd_upstream_retries", odd, "reset", n=i + 1)
        stats.policy.set("meshd_outlier_ejected_endpoints", odd, value=0.5 * i)
    stats.authz_counters("in")[AUTHZ_ALLOW] += 10**17
    stats.downstream_closed("gone")
    stats.upstream_endpoint("api", "10.0.0.1", 8080, 200, 0.004)
    stats.upstream_endpoint("api", "10.0.0.1", 8080, 204, 0.02)
    stats.upstream_endpoint("api", "fd00::1", 8443, 0, 1.5)
    stats.upstream_endpoint("api", "fd00::1", 8443, 503, 11.0)
    stats.snapshot_applied(41)
    stats.snapshot_applied(1700000000)
    stats.snapshot_rejected()
    stats.policy.inc("meshd_health_checks", "api", "success", n=3)
    stats.policy.inc("meshd_trace_spans", "exported", n=2.5)
    stats.policy.set("meshd_health_check_unhealthy_endpoints", "api", value=0)
    stats.cert_expiry = lambda: 1.9e9
    return stats


def awkward_pools() -> list[tuple[str, str, int, int]]:
    return [("api", "10.0.0.1:8080", 3, 5), ('q"uote', "[fd00::1]:8443", 0, 1)]


def meshd_text() -> str:
    out = TextWriter()
    write_meshd(out, awkward_stats(), awkward_pools)
    return out.body().decode("utf-8")


def parsed(text: str) -> list[Metric]:
    return list(text_string_to_metric_families(text))


def test_same_text_as_prometheus_client_wrote() -> None:
    assert meshd_text() == EXPECTED.read_text(encoding="utf-8")


def test_parser_reads_the_same_families_samples_and_labels() -> None:
    mine, reference = parsed(meshd_text()), parsed(EXPECTED.read_text(encoding="utf-8"))
    assert [(f.name, f.type, f.documentation) for f in mine] == [
        (f.name, f.type, f.documentation) for f in reference
    ]
    assert [f.samples for f in mine] == [f.samples for f in reference]
    families = {f.name: f for f in mine}
    # The awkward values come back as they were recorded.
    destinations = {s.labels["destination"] for s in families["meshd_requests"].samples}
    assert destinations == {*AWKWARD, "api"}
    last_bucket = [
        s
        for s in families["meshd_request_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["destination"] == "new\nline"
    ][-1]
    assert (last_bucket.labels["le"], last_bucket.value) == ("+Inf", 4)
    bounds = [
        s.labels["le"]
        for s in families["meshd_request_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["destination"] == 'quo"te'
    ]
    assert bounds == [*(repr(float(b)) for b in BUCKETS), "+Inf"]
    pools = {s.labels["cluster"] for s in families["meshd_upstream_pool_connections"].samples}
    assert pools == {"api", 'q"uote'}
    assert families["meshd_tcp_received_bytes"].samples[1].value == 2469135780


def test_process_families_as_process_collector_gave_them() -> None:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    reference = parsed(generate_latest(registry).decode())
    out = TextWriter()
    ProcessMetrics().write(out)
    mine = parsed(out.body().decode())
    assert [(f.name, f.type, f.documentation) for f in mine] == [
        (f.name, f.type, f.documentation) for f in reference
    ]
    assert [f.name for f in mine] == PROCESS_FAMILIES
    values = {f.name: f.samples[0].value for f in mine}
    expected = {f.name: f.samples[0].value for f in reference}
    for name in ("process_start_time_seconds", "process_max_fds"):
        assert values[name] == expected[name]
    # Live values: read a moment apart, close but not equal.
    assert 0 < values["process_resident_memory_bytes"] < values["process_virtual_memory_bytes"]
    assert abs(values["process_open_fds"] - expected["process_open_fds"]) <= 2
    assert 0 < expected["process_cpu_seconds"] <= values["process_cpu_seconds"]


def test_no_proc_no_process_families(tmp_path: Path) -> None:
    out = TextWriter()
    ProcessMetrics(proc=str(tmp_path)).write(out)
    assert out.body() == b""


def test_view_ends_with_the_process_families() -> None:
    text = MetricsView(awkward_stats(), awkward_pools).render().decode()
    assert text.startswith(EXPECTED.read_text(encoding="utf-8"))
    names = [f.name for f in parsed(text)]
    assert names[-6:] == PROCESS_FAMILIES


@pytest.mark.parametrize(
    "value",
    [
        0,
        1,
        -3,
        999_999,
        1_000_000,
        1234567,
        -1234567,
        10**17,
        2**63,
        0.0,
        -0.0,
        0.1 + 0.2,
        1e-7,
        123456.7,
        1.9e9,
        1e21,
        1e22,
        -1e22,
        math.inf,
        -math.inf,
        math.nan,
    ],
)
def test_values_as_prometheus_client_formats_them(value: float) -> None:
    assert format_value(value) == floatToGoString(value)  # type: ignore[no-untyped-call]


def test_help_and_label_escapes_round_trip() -> None:
    out = TextWriter()
    help_text = 'Back\\slash, "quotes" and\na second line.'
    out.header("x_total", help_text, "counter")
    names = LabelNames(("b", "a", "z"))
    values = ('q"\\n', "\n\\", "ünï ✓")
    out.sample("x_total", names.render(values), 2)
    text = out.body().decode()
    assert text.splitlines()[0] == r"# HELP x_total Back\\slash, " + '"quotes" and\\na second line.'
    (family,) = parsed(text)
    assert family.documentation == help_text
    (sample,) = family.samples
    assert sample.labels == {"b": 'q"\\n', "a": "\n\\", "z": "ünï ✓"}
    assert list(sample.labels) == ["a", "b", "z"]  # written sorted by name


def test_histogram_without_labels() -> None:
    out = TextWriter()
    out.header("h", "A histogram.", "histogram")
    out.histogram("h", LabelNames(()).around_le(()), ("1.0", "+Inf"), (2, 1), 2.5)
    assert out.body().decode().splitlines()[2:] == [
        'h_bucket{le="1.0"} 2.0',
        'h_bucket{le="+Inf"} 3.0',
        "h_count 3.0",
        "h_sum 2.5",
    ]


def test_pid_other_than_self() -> None:
    out = TextWriter()
    ProcessMetrics(pid=str(os.getpid())).write(out)
    assert b"process_open_fds " in out.body()
