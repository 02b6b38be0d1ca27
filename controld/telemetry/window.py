"""The rolling window of telemetry: what the sidecars reported, in 10-second buckets.

Reports are merged as they arrive into the bucket of their arrival time, keyed by what the
views show (destination and route, destination and endpoint, source and destination), not by
sidecar: a thousand sidecars of one service calling another add to the same rows. The window
keeps :data:`~meshcore.api.telemetry.MAX_WINDOW_S` seconds (90 buckets); older buckets are
dropped as time moves on.

Memory is bounded three ways (:class:`WindowLimits`): rows per bucket and kind (beyond: the
report's rows are dropped and counted in :attr:`TelemetryWindow.dropped_rows`), sidecars
tracked (beyond: new sidecars are not tracked, :attr:`TelemetryWindow.refused_instances`), and
sidecars silent for longer than the window are forgotten. Per sidecar, the policy counters sit
in a fixed array of one slot per bucket.

Pure: every method takes the time (``now``, Unix seconds) from its caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from controld.telemetry.rows import (
    COUNTERS,
    SLOTS,
    Bucket,
    EdgeAcc,
    Instance,
    Row,
    Sum,
    percentile_ms,
)
from meshcore.api.report import TelemetryReport
from meshcore.api.telemetry import (
    MAX_WINDOW_S,
    RESOLUTION_S,
    Edge,
    EdgesTelemetry,
    EndpointStats,
    EndpointsTelemetry,
    InstancesTelemetry,
    InstanceTelemetry,
    RouteStats,
    RoutesTelemetry,
    ServiceStats,
    ServicesTelemetry,
)

__all__ = ["SLOTS", "TelemetryWindow", "WindowLimits", "percentile_ms"]


@dataclass(frozen=True, slots=True)
class WindowLimits:
    """The window's memory bounds."""

    #: Rows per bucket and kind (routes, endpoints, edges).
    max_rows: int = 20_000
    #: Sidecars tracked at once.
    max_instances: int = 20_000


class TelemetryWindow:
    """Merges reports into the rolling window and answers the views (see the module doc)."""

    def __init__(self, limits: WindowLimits | None = None) -> None:
        self.limits = limits or WindowLimits()
        self._buckets: dict[int, Bucket] = {}
        self._instances: dict[str, Instance] = {}
        self._last_sweep = -1
        #: Rows not kept because a bucket was full, and sidecars not tracked (over the caps).
        self.dropped_rows = 0
        self.refused_instances = 0
        #: Reports merged.
        self.reports = 0

    # -- ingest ------------------------------------------------------------------------------

    def ingest(self, proxy_id: str, report: TelemetryReport, now: float) -> None:
        """Merge one sidecar's report, received at ``now``."""
        slot = int(now // RESOLUTION_S)
        self._sweep(slot, now)
        self.reports += 1
        inst = self._instances.get(proxy_id)
        if inst is None:
            if len(self._instances) >= self.limits.max_instances:
                self.refused_instances += 1
            else:
                inst = self._instances[proxy_id] = Instance(proxy_id, report.service)
        if inst is not None:
            inst.service = report.service
            inst.last_contact = now
            inst.snapshot_version = report.snapshot_version
            inst.cert_not_after = report.cert_not_after
            inst.ejected = report.ejected_endpoints
            inst.dropped_series = report.dropped_series
            c = report.counts
            inst.add(
                slot,
                (
                    c.retries,
                    c.overflows,
                    c.ejections,
                    c.rate_limited,
                    c.denied,
                    c.health_check_failures,
                ),
            )
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = Bucket()
        cap = self.limits.max_rows
        source = report.service
        for h in report.http:
            row = self._row(bucket.routes, (h.destination, h.route), cap)
            if row is not None:
                row.add(h.requests, h.errors, h.latency)
            edge = self._edge(bucket.edges, (source, h.destination, "http"), cap)
            if edge is not None:
                edge.requests += h.requests
                edge.failed += h.error_count
                if h.mtls:
                    edge.mtls += h.requests
                else:
                    edge.plain += h.requests
        for e in report.endpoints:
            row = self._row(bucket.endpoints, (e.destination, e.endpoint), cap)
            if row is not None:
                row.add(e.requests, e.errors, e.latency)
        for t in report.tcp:
            edge = self._edge(bucket.edges, (source, t.destination, "tcp"), cap)
            if edge is not None:
                # Attempts: connections established plus those that failed to.
                edge.requests += t.opened + t.failed
                edge.failed += t.failed
                edge.bytes += t.bytes_in + t.bytes_out
                if t.mtls:
                    edge.mtls += max(t.opened, 1)
                else:
                    edge.plain += max(t.opened, 1)

    def _row(self, rows: dict[tuple[str, str], Row], key: tuple[str, str], cap: int) -> Row | None:
        row = rows.get(key)
        if row is None:
            if len(rows) >= cap:
                self.dropped_rows += 1
                return None
            row = rows[key] = Row()
        return row

    def _edge(
        self, edges: dict[tuple[str, str, str], EdgeAcc], key: tuple[str, str, str], cap: int
    ) -> EdgeAcc | None:
        edge = edges.get(key)
        if edge is None:
            if len(edges) >= cap:
                self.dropped_rows += 1
                return None
            edge = edges[key] = EdgeAcc()
        return edge

    def _sweep(self, slot: int, now: float) -> None:
        """Drop buckets older than the window, and sidecars silent for longer (once a slot)."""
        if slot == self._last_sweep:
            return
        self._last_sweep = slot
        oldest = slot - SLOTS + 1
        for old in [s for s in self._buckets if s < oldest]:
            del self._buckets[old]
        horizon = now - MAX_WINDOW_S
        for proxy_id in [p for p, i in self._instances.items() if i.last_contact < horizon]:
            del self._instances[proxy_id]

    # -- views -------------------------------------------------------------------------------

    def _slots(self, window_s: int, now: float) -> tuple[list[int], int, float]:
        """The bucket slots of the last ``window_s`` seconds (oldest first), the window rounded
        to whole buckets, and the seconds those buckets have covered so far (the newest is
        still filling): the divisor of the rates."""
        slot = int(now // RESOLUTION_S)
        self._sweep(slot, now)
        n = max(1, min(SLOTS - 1, -(-window_s // RESOLUTION_S)))
        covered = (n - 1) * RESOLUTION_S + max(1.0, now - slot * RESOLUTION_S)
        return list(range(slot - n + 1, slot + 1)), n * RESOLUTION_S, covered

    def _sum_rows(
        self, window_s: int, now: float, pick: Callable[[Bucket], dict[tuple[str, str], Row]]
    ) -> tuple[dict[tuple[str, str], Sum], int, float]:
        slots, span, covered = self._slots(window_s, now)
        sums: dict[tuple[str, str], Sum] = {}
        for index, slot in enumerate(slots):
            bucket = self._buckets.get(slot)
            if bucket is None:
                continue
            for key, row in pick(bucket).items():
                acc = sums.get(key)
                if acc is None:
                    acc = sums[key] = Sum(len(slots))
                acc.add(index, row)
        return sums, span, covered

    def services(self, window_s: int, now: float) -> ServicesTelemetry:
        """Traffic per destination service (all callers and routes)."""
        sums, span, covered = self._sum_rows(window_s, now, lambda b: b.routes)
        merged: dict[str, Sum] = {}
        for (service, _route), s in sums.items():
            acc = merged.get(service)
            if acc is None:
                merged[service] = s
                continue
            acc.requests += s.requests
            acc.errors += s.errors
            acc.hist = [a + b for a, b in zip(acc.hist, s.hist, strict=True)]
            acc.series = [a + b for a, b in zip(acc.series, s.series, strict=True)]
            for reason, n in s.reasons.items():
                acc.reasons[reason] = acc.reasons.get(reason, 0) + n
        rows = tuple(
            ServiceStats.model_validate({"service": name, **s.stats(covered)})
            for name, s in sorted(merged.items())
        )
        return ServicesTelemetry(generated_at=now, window_s=span, services=rows)

    def routes(self, service: str, window_s: int, now: float) -> RoutesTelemetry:
        """Traffic per route of ``service`` (as the destination)."""
        sums, span, covered = self._sum_rows(window_s, now, lambda b: b.routes)
        rows = tuple(
            RouteStats.model_validate({"service": dst, "route": route, **s.stats(covered)})
            for (dst, route), s in sorted(sums.items())
            if dst == service
        )
        return RoutesTelemetry(generated_at=now, window_s=span, service=service, routes=rows)

    def endpoints(
        self,
        service: str,
        window_s: int,
        now: float,
        owner: Callable[[str], str | None] = lambda _address: None,
    ) -> EndpointsTelemetry:
        """Traffic per endpoint of ``service``; ``owner`` names the proxy id at an address."""
        sums, span, covered = self._sum_rows(window_s, now, lambda b: b.endpoints)
        rows = tuple(
            EndpointStats.model_validate(
                {"service": dst, "endpoint": ep, "proxy_id": owner(ep), **s.stats(covered)}
            )
            for (dst, ep), s in sorted(sums.items())
            if dst == service
        )
        return EndpointsTelemetry(generated_at=now, window_s=span, service=service, endpoints=rows)

    def edges(self, window_s: int, now: float) -> EdgesTelemetry:
        """The service graph: one edge per (source, destination, protocol)."""
        slots, span, covered = self._slots(window_s, now)
        sums: dict[tuple[str, str, str], EdgeAcc] = {}
        for slot in slots:
            bucket = self._buckets.get(slot)
            if bucket is None:
                continue
            for key, e in bucket.edges.items():
                acc = sums.get(key)
                if acc is None:
                    acc = sums[key] = EdgeAcc()
                acc.requests += e.requests
                acc.failed += e.failed
                acc.bytes += e.bytes
                acc.mtls += e.mtls
                acc.plain += e.plain
        edges = tuple(
            Edge(
                source=src,
                destination=dst,
                protocol="tcp" if proto == "tcp" else "http",
                rps=e.requests / covered,
                error_rate=min(1.0, e.failed / e.requests) if e.requests else None,
                mtls=e.mtls > 0 and e.plain == 0,
                bytes_per_s=e.bytes / covered,
            )
            for (src, dst, proto), e in sorted(sums.items())
        )
        return EdgesTelemetry(generated_at=now, window_s=span, edges=edges)

    def instances(self, window_s: int, now: float) -> InstancesTelemetry:
        """Every sidecar heard from within the kept window, with its counters over the asked one."""
        slots, span, _covered = self._slots(window_s, now)
        rows = []
        for proxy_id, inst in sorted(self._instances.items()):
            sums = dict(zip(COUNTERS, inst.window_sums(slots[0]), strict=True))
            rows.append(
                InstanceTelemetry(
                    proxy_id=proxy_id,
                    service=inst.service,
                    snapshot_version=inst.snapshot_version,
                    last_contact=inst.last_contact,
                    cert_not_after=inst.cert_not_after,
                    ejected_endpoints=inst.ejected,
                    dropped_series=inst.dropped_series,
                    **sums,
                )
            )
        return InstancesTelemetry(generated_at=now, window_s=span, instances=tuple(rows))

    def status_json(self) -> dict[str, int]:
        """Counts for ``/v1/status`` and metrics."""
        return {
            "instances": len(self._instances),
            "buckets": len(self._buckets),
            "reports": self.reports,
            "dropped_rows": self.dropped_rows,
            "refused_instances": self.refused_instances,
        }
