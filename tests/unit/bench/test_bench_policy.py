"""The pure parts of ``bench/run policy``: the two snapshots, metric sums and the report."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from meshcore.model import Bootstrap, Snapshot
from meshcore.model.loading import load_model

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

import policy  # noqa: E402
from common import BenchError, WrkResult  # noqa: E402
from dataplane import BenchPath, Measured  # noqa: E402

pytestmark = pytest.mark.timeout(30)


def _load(tmp_path: Path, *, with_policy: bool) -> tuple[Bootstrap, Snapshot]:
    boot_path = policy.write_sidecar(
        tmp_path, backend_port=20001, port=20002, admin_port=20003, policy=with_policy
    )
    return load_model(Bootstrap, boot_path), load_model(Snapshot, tmp_path / "snapshot.yaml")


def test_plain_snapshot_has_no_policy(tmp_path: Path) -> None:
    boot, snap = _load(tmp_path, with_policy=False)
    assert str(boot.app) == "127.0.0.1:20001"
    (listener,) = snap.listeners
    assert (listener.direction, str(listener.address), listener.route_table) == (
        "inbound",
        "127.0.0.1:20002",
        "bench",
    )
    (route,) = snap.route_tables[0].routes
    assert route.retries is None and [b.cluster for b in route.backends] == ["backend"]
    (cluster,) = snap.clusters
    assert cluster.lb_policy == "round_robin"
    assert (cluster.limits, cluster.outlier_detection, cluster.health_check) == (None, None, None)
    assert snap.rate_limits == ()


def test_policy_snapshot_differs_only_by_policy(tmp_path: Path) -> None:
    _, snap = _load(tmp_path, with_policy=True)
    (route,) = snap.route_tables[0].routes
    assert route.retries is not None
    assert route.retries.attempts == 3
    assert route.retries.retry_on == ("connect-failure", "gateway-error")
    (cluster,) = snap.clusters
    assert cluster.lb_policy == "ewma"
    assert cluster.limits is not None and cluster.limits.max_requests >= 100_000
    assert cluster.outlier_detection is not None
    assert cluster.health_check is not None
    assert (cluster.health_check.kind, cluster.health_check.interval_s) == ("http", 1)
    (limit,) = snap.rate_limits
    assert limit.match is None and limit.requests_per_second >= 1_000_000
    plain = policy.bench_snapshot(20001, 20002, policy=False)
    with_policy = policy.bench_snapshot(20001, 20002, policy=True)
    assert plain["listeners"] == with_policy["listeners"]
    assert plain["clusters"][0]["endpoints"] == with_policy["clusters"][0]["endpoints"]


METRICS = """# HELP meshd_health_checks_total Active health checks run.
# TYPE meshd_health_checks_total counter
meshd_health_checks_total{cluster="backend",result="success"} 12.0
meshd_health_checks_total{cluster="backend",result="failure"} 1.0
meshd_rate_limited_total{listener="bench-policy",rate_limit="bench-limit"} 0.0
meshd_requests_total{destination="backend"} 5.0
"""


def test_metric_sums() -> None:
    sums = policy.metric_sums(METRICS, policy.POLICY_COUNTERS)
    assert sums["meshd_health_checks_total"] == 13
    assert sums["meshd_rate_limited_total"] == 0
    assert sums["meshd_upstream_retries_total"] == 0
    assert "meshd_requests_total" not in sums


def _measured(name: str, rps: float, cpu: float | None, *, non_2xx: int = 0) -> Measured:
    wrk = WrkResult(
        requests=int(rps * 10), rps=rps, p50_s=0.002, p99_s=0.008, non_2xx=non_2xx, socket_errors=0
    )
    return Measured(BenchPath(name, 1, None), wrk, cpu)


def test_report_prints_the_ratio_and_both_cpu_figures() -> None:
    counters = dict.fromkeys(policy.POLICY_COUNTERS, 0.0)
    counters["meshd_health_checks_total"] = 10
    lines = policy.report(
        _measured("meshd-plain", 10000, 60.04), _measured("meshd-policy", 9300, 64.51), counters
    )
    assert "RATIO policy_overhead=0.93" in lines
    assert "CPU_US_PER_REQ plain=60.0 policy=64.5" in lines
    assert lines[-1] == "targets: policy_overhead>=0.90 ok"
    assert not any(line.startswith("WARNING") for line in lines)
    assert not any("ran no health check" in line for line in lines)


def test_report_warns_about_errors_triggered_policy_and_missing_checks() -> None:
    counters = dict.fromkeys(policy.POLICY_COUNTERS, 0.0)
    counters["meshd_rate_limited_total"] = 3
    lines = policy.report(
        _measured("meshd-plain", 10000, None),
        _measured("meshd-policy", 8000, 70.0, non_2xx=3),
        counters,
    )
    assert any(line.startswith("WARNING meshd-policy: 3 non-2xx") for line in lines)
    assert any("meshd_rate_limited_total" in line and "WARNING" in line for line in lines)
    assert any("ran no health check" in line for line in lines)
    assert "CPU_US_PER_REQ plain=- policy=70.0" in lines
    assert lines[-1] == "targets: policy_overhead>=0.90 MISS"


def test_report_without_plain_requests_fails() -> None:
    counters = dict.fromkeys(policy.POLICY_COUNTERS, 0.0)
    with pytest.raises(BenchError):
        policy.report(_measured("meshd-plain", 0, None), _measured("meshd-policy", 1, 1), counters)


def test_combined_rounds() -> None:
    runs = [_measured("meshd-plain", 10000, 50.0), _measured("meshd-plain", 8000, 70.0)]
    both = policy.combine(runs)
    assert both.wrk.rps == 9000
    assert both.wrk.requests == 180000
    assert both.cpu_us_per_req == pytest.approx((50 * 100000 + 70 * 80000) / 180000)
    assert policy.combine(runs[:1]) is runs[0]
