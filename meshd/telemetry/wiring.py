"""A sidecar's telemetry parts, started from its own state: the span exporter (bootstrap
``tracing``) and, in controld mode, the reporter (bootstrap ``telemetry``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio

from meshcore.model import Bootstrap
from meshcore.model.snapshot import LOCAL_APP_CLUSTER

if TYPE_CHECKING:
    from meshd.control.source import ControlSource
    from meshd.sidecar_base import SidecarBase
    from meshd.telemetry.delta import ClusterFacts
    from meshd.telemetry.reporter import TelemetryReporter

__all__ = ["cert_not_after", "start_reporter", "start_tracing"]


def cert_not_after(sidecar: SidecarBase) -> float | None:
    """When the sidecar's workload certificate expires (None: no identity)."""
    identity = sidecar.tls.identity
    return identity.not_after.timestamp() if identity is not None else None


async def start_tracing(sidecar: SidecarBase, nursery: trio.Nursery, bootstrap: Bootstrap) -> None:
    """Export sampled spans when the bootstrap has ``tracing`` (read once: a change takes a
    restart)."""
    if bootstrap.tracing is None:
        return
    # Loaded here, not at import: a sidecar without tracing or telemetry (file mode) never
    # carries the exporter, the report models or controld's client (issue 15).
    from meshd.telemetry.exporter import SpanExporter

    exporter = SpanExporter(
        bootstrap.tracing,
        service=bootstrap.service,
        proxy_id=bootstrap.node_id,
        stats=sidecar.stats.policy,
    )
    sidecar.shared.tracer = exporter.recorder
    await nursery.start(exporter.run)


async def start_reporter(
    sidecar: SidecarBase, nursery: trio.Nursery, bootstrap: Bootstrap, control: ControlSource
) -> TelemetryReporter | None:
    """controld mode: report telemetry about once a second (None when turned off)."""
    if not bootstrap.telemetry.enabled:
        return None
    from meshd.telemetry.delta import ReportBuilder
    from meshd.telemetry.reporter import TelemetryReporter

    reporter = TelemetryReporter(
        builder=ReportBuilder(sidecar.stats, bootstrap.service),
        proxy_id=bootstrap.node_id,
        shared=sidecar.shared,
        client=control.side_client,
        facts=lambda: _facts(sidecar),
        cert_not_after=lambda: cert_not_after(sidecar),
        ejected=lambda: _ejected_endpoints(sidecar),
        policy=sidecar.stats.policy,
        interval_s=bootstrap.telemetry.interval_s,
    )
    await nursery.start(reporter.run)
    return reporter


def _facts(sidecar: SidecarBase) -> ClusterFacts:
    from meshd.telemetry.delta import ClusterFacts

    runtime = sidecar.runtime
    if runtime is None:
        return ClusterFacts()
    clusters = runtime.snapshot.clusters
    return ClusterFacts(
        services={c.name: c.service for c in clusters},
        mtls=frozenset(c.service for c in clusters if c.tls is not None),
        local=frozenset({LOCAL_APP_CLUSTER}),
    )


def _ejected_endpoints(sidecar: SidecarBase) -> Iterator[str]:
    """``cluster/host:port`` of the endpoints outlier detection has ejected now."""
    if sidecar.runtime is None:
        return
    for cluster in sidecar.runtime.clusters.values():
        for ep in cluster.describe()["endpoints"]:  # type: ignore[attr-defined]
            outlier = ep.get("outlier")
            if isinstance(outlier, dict) and outlier.get("ejected"):
                yield f"{cluster.name}/{ep['address']}"
