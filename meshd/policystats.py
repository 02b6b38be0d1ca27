"""Counters and gauges of the sidecar's traffic policy: retries, circuit breakers, outlier
detection, health checks, rate limits, faults and mirroring.

Every metric is declared once in :data:`POLICY_METRICS` (name, help, labels, kind); callers
record by name with plain dict updates (:meth:`PolicyStats.inc`, :meth:`PolicyStats.set`), and
:func:`meshd.metrics.write_policy` writes the values as Prometheus text at scrape time.
Recording a name that isn't declared, or with the wrong number of labels, is a programming
error and raises at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["POLICY_METRICS", "MetricSpec", "PolicyStats"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One declared metric (counters are named without their ``_total``)."""

    help: str
    labels: tuple[str, ...]
    kind: Literal["counter", "gauge"] = "counter"


#: Name (without ``_total`` for counters) -> declaration.
POLICY_METRICS: Final[dict[str, MetricSpec]] = {
    "meshd_upstream_retries": MetricSpec(
        "Retries sent upstream, by cluster and the condition retried (connect-failure, reset, "
        "gateway-error, 5xx, retriable-4xx, status).",
        ("cluster", "reason"),
    ),
    "meshd_retry_budget_exhausted": MetricSpec(
        "Retries not sent because the cluster's retry budget was spent.", ("cluster",)
    ),
    "meshd_upstream_overflow": MetricSpec(
        "Requests and retries refused by a circuit breaker, by cluster and limit "
        "(max_connections, max_pending_requests, max_requests, max_retries).",
        ("cluster", "limit"),
    ),
    "meshd_outlier_ejections": MetricSpec(
        "Endpoints ejected by outlier detection, by cluster and cause (consecutive_5xx, "
        "consecutive_gateway_errors, consecutive_local_origin_failures, success_rate).",
        ("cluster", "cause"),
    ),
    "meshd_outlier_ejected_endpoints": MetricSpec(
        "Endpoints ejected now, by cluster.", ("cluster",), "gauge"
    ),
    "meshd_health_checks": MetricSpec(
        "Active health checks run, by cluster and result (success, failure).",
        ("cluster", "result"),
    ),
    "meshd_health_check_unhealthy_endpoints": MetricSpec(
        "Endpoints failing their active health check now, by cluster.", ("cluster",), "gauge"
    ),
    "meshd_rate_limited": MetricSpec(
        "Requests (http) or connections (tcp) refused by a rate limit, by listener and limit.",
        ("listener", "rate_limit"),
    ),
    "meshd_faults_injected": MetricSpec(
        "Faults injected, by route and kind (delay, abort).", ("route", "kind")
    ),
    "meshd_mirrored_requests": MetricSpec(
        "Mirrored copies of requests, by cluster and result (sent, failed, dropped).",
        ("cluster", "result"),
    ),
    "meshd_trace_spans": MetricSpec(
        "Spans of sampled traces, by result (exported, failed: the export request failed, "
        "dropped: the export queue was full).",
        ("result",),
    ),
    "meshd_telemetry_reports": MetricSpec(
        "Telemetry reports to controld, by result (sent, failed).", ("result",)
    ),
}


class PolicyStats:
    """The values of :data:`POLICY_METRICS`; recording is a dict update."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[str, dict[tuple[str, ...], float]] = {n: {} for n in POLICY_METRICS}

    def inc(self, name: str, *labels: str, n: float = 1) -> None:
        """Add ``n`` to the counter ``name`` at ``labels``."""
        series = self._series(name, labels)
        series[labels] = series.get(labels, 0) + n

    def set(self, name: str, *labels: str, value: float) -> None:
        """Set the gauge ``name`` at ``labels``."""
        self._series(name, labels)[labels] = value

    def value(self, name: str, *labels: str) -> float:
        """The current value (0 when never recorded)."""
        return self._series(name, labels).get(labels, 0)

    def _series(self, name: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        spec = POLICY_METRICS[name]
        if len(labels) != len(spec.labels):
            raise ValueError(f"{name} takes labels {spec.labels}, got {labels}")
        return self._values[name]

    def items(self) -> Iterable[tuple[str, MetricSpec, list[tuple[tuple[str, ...], float]]]]:
        """Each metric with a copy of its series."""
        for name, spec in POLICY_METRICS.items():
            yield name, spec, list(self._values[name].items())
