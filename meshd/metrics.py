"""The Prometheus view of the sidecar's counters, built when ``/metrics`` is scraped.

:class:`MeshdCollector` and :class:`PolicyCollector` turn the raw counts of
:class:`meshd.stats.Stats` and :class:`meshd.policystats.PolicyStats` into metric families at
scrape time. This module, and prometheus-client with it (~2.5 MB of resident memory with the
stdlib HTTP and WSGI servers its exposition module imports), loads at the first scrape
(:meth:`meshd.sidecar_base.SidecarBase.metrics_registry`), not at start-up: a sidecar nobody
scrapes never pays for it (issue 15).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from meshd.policystats import POLICY_METRICS, MetricSpec, PolicyStats
from meshd.stats import (
    _CLOSED,
    _OPENED,
    _RECEIVED,
    _SENT,
    AUTHZ_ACTIONS,
    BUCKETS,
    PoolStats,
    Stats,
)

__all__ = ["MeshdCollector", "PolicyCollector", "build_registry"]

_BUCKET_LABELS = (*(repr(float(b)) for b in BUCKETS), "+Inf")
_HTTP_LABELS = ("direction", "source", "destination", "route", "method", "code")
_TCP_LABELS = ("direction", "source", "destination")


def _no_pools() -> Iterable[tuple[str, str, int, int]]:
    return ()


class MeshdCollector(Collector):
    """Builds the ``meshd_*`` metric families from a :class:`Stats` at scrape time."""

    def __init__(self, stats: Stats, pool_stats: PoolStats = _no_pools) -> None:
        self._stats = stats
        self._pool_stats = pool_stats

    def describe(self) -> Iterable[Metric]:
        """Sample-free families, so registration can check names without a collection."""
        return [*_families(), *_extra_families(None)]

    def collect(self) -> Iterator[Metric]:
        """Convert the current counts into metric families."""
        s = self._stats
        (
            requests,
            duration,
            tcp_opened,
            tcp_closed,
            tcp_received,
            tcp_sent,
            ds_active,
            ds_total,
            limit_events,
            upstream_errors,
            pool,
            snap_version,
            snap_updates,
            authz,
        ) = _families()

        # Copies: cheap, and immune to a recording call adding a key mid-iteration.
        for (direction, src, dst, route, method, code), hist in list(s._http.items()):
            labels = [direction, src, dst, route, method, str(code)]
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, n in zip(_BUCKET_LABELS, hist.buckets, strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            requests.add_metric(labels, cumulative)
            duration.add_metric(labels, buckets, hist.total)

        for (direction, src, dst), rec in list(s._tcp.items()):
            labels = [direction, src, dst]
            tcp_opened.add_metric(labels, rec[_OPENED])
            tcp_closed.add_metric(labels, rec[_CLOSED])
            tcp_received.add_metric(labels, rec[_RECEIVED])
            tcp_sent.add_metric(labels, rec[_SENT])

        for listener, (active, total) in list(s._downstream.items()):
            ds_active.add_metric([listener], active)
            ds_total.add_metric([listener], total)

        for (listener, event), count in list(s._limit_events.items()):
            limit_events.add_metric([listener, event], count)

        for (cluster, reason), count in list(s._upstream_errors.items()):
            upstream_errors.add_metric([cluster, reason], count)

        for cluster, endpoint, active, idle in self._pool_stats():
            pool.add_metric([cluster, endpoint, "active"], active)
            pool.add_metric([cluster, endpoint, "idle"], idle)

        snap_version.add_metric([], s._snapshot_version)
        snap_updates.add_metric(["applied"], s._snapshot_applied)
        snap_updates.add_metric(["rejected"], s._snapshot_rejected)

        for listener, counts in list(s._authz.items()):
            for action, count in zip(AUTHZ_ACTIONS, counts, strict=True):
                authz.add_metric([listener, action], count)

        yield requests
        yield duration
        yield tcp_opened
        yield tcp_closed
        yield tcp_received
        yield tcp_sent
        yield ds_active
        yield ds_total
        yield limit_events
        yield upstream_errors
        yield pool
        yield snap_version
        yield snap_updates
        yield authz
        yield from _extra_families(s)


def _families() -> tuple[
    CounterMetricFamily,
    HistogramMetricFamily,
    CounterMetricFamily,
    CounterMetricFamily,
    CounterMetricFamily,
    CounterMetricFamily,
    GaugeMetricFamily,
    CounterMetricFamily,
    CounterMetricFamily,
    CounterMetricFamily,
    GaugeMetricFamily,
    GaugeMetricFamily,
    CounterMetricFamily,
    CounterMetricFamily,
]:
    return (
        CounterMetricFamily("meshd_requests_total", "HTTP requests proxied.", labels=_HTTP_LABELS),
        HistogramMetricFamily(
            "meshd_request_duration_seconds",
            "Time from request start to the end of the response.",
            labels=_HTTP_LABELS,
        ),
        CounterMetricFamily(
            "meshd_tcp_connections_opened_total",
            "Proxied TCP connections established.",
            labels=_TCP_LABELS,
        ),
        CounterMetricFamily(
            "meshd_tcp_connections_closed_total",
            "Proxied TCP connections closed.",
            labels=_TCP_LABELS,
        ),
        CounterMetricFamily(
            "meshd_tcp_received_bytes_total",
            "Bytes the proxy received on proxied TCP connections.",
            labels=_TCP_LABELS,
        ),
        CounterMetricFamily(
            "meshd_tcp_sent_bytes_total",
            "Bytes the proxy sent on proxied TCP connections.",
            labels=_TCP_LABELS,
        ),
        GaugeMetricFamily(
            "meshd_downstream_connections_active",
            "Downstream connections currently open.",
            labels=("listener",),
        ),
        CounterMetricFamily(
            "meshd_downstream_connections_total",
            "Downstream connections accepted.",
            labels=("listener",),
        ),
        CounterMetricFamily(
            "meshd_listener_limit_events_total",
            "Connections closed or refused by a listener's connection limits, and failed "
            "accepts (over_limit, idle_evicted, first_byte_timeout, accept_failed).",
            labels=("listener", "event"),
        ),
        CounterMetricFamily(
            "meshd_upstream_errors_total",
            "Failures talking to an upstream cluster, by reason.",
            labels=("cluster", "reason"),
        ),
        GaugeMetricFamily(
            "meshd_upstream_pool_connections",
            "Pooled upstream connections by endpoint and state (active or idle).",
            labels=("cluster", "endpoint", "state"),
        ),
        GaugeMetricFamily(
            "meshd_snapshot_version",
            "Version of the snapshot in service (0 before the first).",
        ),
        CounterMetricFamily(
            "meshd_snapshot_updates_total",
            "Snapshots received from the control plane, by result.",
            labels=("result",),
        ),
        CounterMetricFamily(
            "meshd_authz_decisions_total",
            "Inbound access decisions, by listener and outcome (allow, deny, audit).",
            labels=("listener", "action"),
        ),
    )


def _extra_families(s: Stats | None) -> Iterator[Metric]:
    """Per-endpoint requests and the certificate expiry (``s`` None: sample-free)."""
    endpoint = CounterMetricFamily(
        "meshd_upstream_endpoint_requests_total",
        "HTTP requests by upstream cluster, endpoint (host:port) and status class (0xx: no "
        "response).",
        labels=("cluster", "endpoint", "code_class"),
    )
    expiry = GaugeMetricFamily(
        "meshd_certificate_expiry_timestamp_seconds",
        "Expiry (not_after, Unix seconds) of the workload certificate in use; absent without one.",
    )
    if s is not None:
        counts: dict[tuple[str, str, str], int] = {}
        for (cluster, host, port, klass), hist in list(s._endpoints.items()):
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            key = (cluster, address, f"{klass}xx")
            counts[key] = counts.get(key, 0) + sum(hist.buckets)
        for labels, count in counts.items():
            endpoint.add_metric(list(labels), count)
        not_after = s.cert_expiry()
        if not_after is not None:
            expiry.add_metric([], not_after)
    yield endpoint
    yield expiry


class PolicyCollector(Collector):
    """Builds the policy metric families from a :class:`PolicyStats` at scrape time."""

    def __init__(self, stats: PolicyStats) -> None:
        self._stats = stats

    def describe(self) -> Iterable[Metric]:
        """Sample-free families, so registration can check names without a collection."""
        return [_family(name, spec) for name, spec in POLICY_METRICS.items()]

    def collect(self) -> Iterator[Metric]:
        """Convert the current values into metric families."""
        for name, spec, series in self._stats.items():
            family = _family(name, spec)
            for labels, value in series:
                family.add_metric(list(labels), value)
            yield family


def _family(name: str, spec: MetricSpec) -> CounterMetricFamily | GaugeMetricFamily:
    if spec.kind == "counter":
        return CounterMetricFamily(name, spec.help, labels=spec.labels)
    return GaugeMetricFamily(name, spec.help, labels=spec.labels)


def build_registry(stats: Stats, pool_stats: PoolStats = _no_pools) -> CollectorRegistry:
    """A fresh registry for one daemon: the ``meshd_*`` metrics plus process metrics."""
    registry = CollectorRegistry()
    registry.register(MeshdCollector(stats, pool_stats))
    registry.register(PolicyCollector(stats.policy))
    ProcessCollector(registry=registry)
    return registry
