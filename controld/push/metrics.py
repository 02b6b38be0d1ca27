"""The push hub's Prometheus metrics, registered on the daemon's own registry."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["PushMetrics"]

#: Convergence and ACK latency: the bench's target is p99 <= 1 s.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)
_COMPILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class PushMetrics:
    """``controld_snapshot_*``, ``controld_connected_sidecars``, convergence, ACK and compile
    times; a :class:`~controld.push.state.PushObserver`."""

    def __init__(
        self, registry: CollectorRegistry, *, connected: Callable[[], float] | None = None
    ) -> None:
        self.pushes = Counter(
            "controld_snapshot_pushes",
            "Snapshots handed to sidecars (long-poll answers with a body).",
            registry=registry,
        )
        self.nacks = Counter(
            "controld_snapshot_nacks",
            "Snapshots sidecars rejected (NACKs).",
            registry=registry,
        )
        self.connected = Gauge(
            "controld_connected_sidecars",
            "Sidecars with a long-poll parked now or ended within twice its wait.",
            registry=registry,
        )
        if connected is not None:
            self.connected.set_function(connected)
        self.convergence = Histogram(
            "controld_convergence_seconds",
            "From a change (resource revision or discovery) to every affected sidecar ACKing.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.ack_latency = Histogram(
            "controld_ack_latency_seconds",
            "From a proxy's snapshot being compiled to the proxy reporting it runs it.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.compile_seconds = Histogram(
            "controld_compile_seconds",
            "Time of one reconcile round's compile of the affected proxies' snapshots.",
            buckets=_COMPILE_BUCKETS,
            registry=registry,
        )

    def pushed(self) -> None:
        """Count one push."""
        self.pushes.inc()

    def nacked(self) -> None:
        """Count one NACK."""
        self.nacks.inc()

    def acked(self, latency_s: float) -> None:
        """Observe one ACK's latency."""
        self.ack_latency.observe(latency_s)

    def converged(self, seconds: float) -> None:
        """Observe one rollout's convergence time."""
        self.convergence.observe(seconds)

    def compiled(self, seconds: float) -> None:
        """Observe one compile round."""
        self.compile_seconds.observe(seconds)
