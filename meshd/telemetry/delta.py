"""A telemetry report from the sidecar's counters: the deltas since the previous report.

:class:`ReportBuilder` reads :class:`~meshd.stats.Stats` (copies of plain dicts, on the Trio
thread, once per report) and keeps the previous cumulative values to subtract; the request
path does nothing for it. Only series that changed go out, at most
:data:`~meshcore.api.report.MAX_SERIES` of each kind; the rest are dropped and counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from meshcore.api.report import (
    LATENCY_BOUNDS_MS,
    MAX_SERIES,
    EndpointSeries,
    HttpSeries,
    PolicyCounts,
    SidecarTapEvent,
    TcpSeries,
    TelemetryReport,
)
from meshd.stats import AUTHZ_DENY, BUCKETS, Stats

__all__ = ["ClusterFacts", "ReportBuilder"]

_T = TypeVar("_T")
assert tuple(b * 1000 for b in BUCKETS) == LATENCY_BOUNDS_MS, "histogram bounds differ"

#: Policy metric -> report field (counters summed over their labels).
_POLICY_SUMS: Mapping[str, str] = {
    "meshd_upstream_retries": "retries",
    "meshd_upstream_overflow": "overflows",
    "meshd_outlier_ejections": "ejections",
    "meshd_rate_limited": "rate_limited",
}


@dataclass(frozen=True, slots=True)
class ClusterFacts:
    """What the report needs from the snapshot in force."""

    #: Cluster name -> destination service.
    services: Mapping[str, str] = field(default_factory=dict)
    #: Destination services whose cluster originates mutual TLS.
    mtls: frozenset[str] = frozenset()
    #: Clusters that are not outbound (the local app's): left out of endpoint series.
    local: frozenset[str] = frozenset()


def _sub(cur: list[int], prev: list[int] | None) -> list[int]:
    if prev is None:
        return cur
    return [a - b for a, b in zip(cur, prev, strict=True)]


class ReportBuilder:
    """Builds :class:`TelemetryReport` values from one :class:`Stats` (see the module doc)."""

    def __init__(self, stats: Stats, service: str, *, max_series: int = MAX_SERIES) -> None:
        self._stats = stats
        self._service = service
        self._max = max_series
        self._seq = 0
        self._http: dict[tuple[str, str], list[int]] = {}
        self._errors: dict[tuple[str, str, str], int] = {}
        self._endpoints: dict[tuple[str, str, int], list[int]] = {}
        self._endpoint_errors: dict[tuple[str, str, int, int], int] = {}
        self._tcp: dict[str, list[int]] = {}
        self._upstream_errors: dict[str, int] = {}
        self._policy: dict[str, int] = {}
        #: Series left out of reports over the cap, since the start.
        self.dropped_series = 0

    def build(
        self,
        facts: ClusterFacts,
        *,
        cert_not_after: float | None = None,
        ejected: Iterable[str] = (),
        tap_events: Iterable[SidecarTapEvent] = (),
    ) -> TelemetryReport:
        """The next report (and the new baseline for the one after)."""
        http = self._http_series(facts)
        endpoints = self._endpoint_series(facts)
        tcp = self._tcp_series(facts)
        report = TelemetryReport(
            service=self._service,
            seq=self._seq,
            snapshot_version=self._stats.snapshot_version or None,
            cert_not_after=cert_not_after,
            http=self._cap(http),
            endpoints=self._cap(endpoints),
            tcp=self._cap(tcp),
            counts=self._counts(),
            ejected_endpoints=tuple(ejected)[: self._max],
            dropped_series=self.dropped_series,
            tap_events=tuple(tap_events),
        )
        self._seq += 1
        return report

    def _cap(self, series: list[_T]) -> tuple[_T, ...]:
        if len(series) > self._max:
            self.dropped_series += len(series) - self._max
            series = series[: self._max]
        return tuple(series)

    def _http_series(self, facts: ClusterFacts) -> list[HttpSeries]:
        totals: dict[tuple[str, str], list[int]] = {}
        for (direction, _src, dst, route, _method, _code), buckets in self._stats.http_view():
            if direction != "outbound":
                continue
            acc = totals.get((dst, route))
            if acc is None:
                totals[(dst, route)] = buckets
            else:
                for i, n in enumerate(buckets):
                    acc[i] += n
        errors: dict[tuple[str, str], dict[str, int]] = {}
        for ekey, count in self._stats.route_error_view():
            diff = count - self._errors.get(ekey, 0)
            self._errors[ekey] = count
            if diff:
                errors.setdefault((ekey[0], ekey[1]), {})[ekey[2]] = diff
        out: list[HttpSeries] = []
        for key, buckets in totals.items():
            delta = _sub(buckets, self._http.get(key))
            self._http[key] = buckets
            requests = sum(delta)
            if requests <= 0:
                continue
            out.append(
                HttpSeries(
                    destination=key[0],
                    route=key[1],
                    requests=requests,
                    errors=errors.get(key, {}),
                    latency=tuple(delta),
                    mtls=key[0] in facts.mtls,
                )
            )
        return out

    def _endpoint_series(self, facts: ClusterFacts) -> list[EndpointSeries]:
        totals: dict[tuple[str, str, int], list[int]] = {}
        errors: dict[tuple[str, str, int], dict[str, int]] = {}
        for (cluster, host, port, klass), buckets in self._stats.endpoint_view():
            if cluster in facts.local:
                continue
            key = (cluster, host, port)
            acc = totals.get(key)
            if acc is None:
                totals[key] = list(buckets)
            else:
                for i, n in enumerate(buckets):
                    acc[i] += n
            if klass in (0, 5):
                full = (cluster, host, port, klass)
                count = sum(buckets)
                diff = count - self._endpoint_errors.get(full, 0)
                self._endpoint_errors[full] = count
                if diff:
                    reason = "http_5xx" if klass == 5 else "no_response"
                    errors.setdefault(key, {})[reason] = diff
        out: list[EndpointSeries] = []
        for key, buckets in totals.items():
            delta = _sub(buckets, self._endpoints.get(key))
            self._endpoints[key] = buckets
            requests = sum(delta)
            if requests <= 0:
                continue
            cluster, host, port = key
            out.append(
                EndpointSeries(
                    destination=facts.services.get(cluster, cluster),
                    cluster=cluster,
                    endpoint=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                    requests=requests,
                    errors=errors.get(key, {}),
                    latency=tuple(delta),
                )
            )
        return out

    def _tcp_series(self, facts: ClusterFacts) -> list[TcpSeries]:
        failed: dict[str, int] = {}
        for (cluster, reason), count in self._stats.upstream_error_view():
            ukey = f"{cluster}\0{reason}"
            diff = count - self._upstream_errors.get(ukey, 0)
            self._upstream_errors[ukey] = count
            service = facts.services.get(cluster)
            if diff and service is not None:
                failed[service] = failed.get(service, 0) + diff
        out: list[TcpSeries] = []
        for (direction, _src, dst), rec in self._stats.tcp_view():
            if direction != "outbound":
                continue
            cur = list(rec)
            delta = _sub(cur, self._tcp.get(dst))
            self._tcp[dst] = cur
            if not any(delta):
                continue
            out.append(
                TcpSeries(
                    destination=dst,
                    opened=delta[0],
                    closed=delta[1],
                    failed=failed.get(dst, 0),
                    bytes_in=delta[2],
                    bytes_out=delta[3],
                    mtls=dst in facts.mtls,
                )
            )
        return out

    def _counts(self) -> PolicyCounts:
        totals = dict.fromkeys(
            ("retries", "overflows", "ejections", "rate_limited", "denied", "hc"), 0
        )
        for name, _spec, series in self._stats.policy.items():
            target = _POLICY_SUMS.get(name)
            if target is not None:
                totals[target] += int(sum(v for _labels, v in series))
            elif name == "meshd_health_checks":
                totals["hc"] += int(sum(v for labels, v in series if labels[-1] == "failure"))
        totals["denied"] = sum(c[AUTHZ_DENY] for _listener, c in self._stats.authz_view())
        delta = {k: max(0, v - self._policy.get(k, 0)) for k, v in totals.items()}
        self._policy = totals
        return PolicyCounts(
            retries=delta["retries"],
            overflows=delta["overflows"],
            ejections=delta["ejections"],
            rate_limited=delta["rate_limited"],
            denied=delta["denied"],
            health_check_failures=delta["hc"],
        )
