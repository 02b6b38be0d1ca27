"""The Prometheus view of the sidecar's counters, written when ``/metrics`` is scraped.

:class:`MetricsView` turns the raw counts of :class:`meshd.stats.Stats` and
:class:`meshd.policystats.PolicyStats`, the pools' state and the process's (``/proc``,
:mod:`meshd.procmetrics`) into the Prometheus text format (:mod:`meshd.exposition`) at each
scrape: the same families, labels and values prometheus-client wrote for meshd before, without
importing it (its exposition module brings the stdlib's HTTP servers and clients, ~3.5 MB of
resident memory per scraped sidecar; issue 15). The module loads at the first scrape
(:meth:`meshd.sidecar_base.SidecarBase.metrics_text`).

It reads live state, so it runs on the daemon's Trio thread, like the recording it reads.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshd.exposition import Kind, LabelNames, TextWriter
from meshd.policystats import POLICY_METRICS, PolicyStats
from meshd.procmetrics import ProcessMetrics
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

__all__ = ["MetricsView", "write_meshd", "write_policy"]

#: The duration histogram's ``le`` values, as prometheus-client formatted them.
_BOUNDS = (*(repr(float(b)) for b in BUCKETS), "+Inf")
_HTTP = LabelNames(("direction", "source", "destination", "route", "method", "code"))
_TCP = LabelNames(("direction", "source", "destination"))
_LISTENER = LabelNames(("listener",))
_NONE = LabelNames(())


def _no_pools() -> Iterable[tuple[str, str, int, int]]:
    return ()


class _Family:
    """A family's name (as its samples are named), help text, kind and label names."""

    __slots__ = ("help", "kind", "labels", "name")

    def __init__(self, name: str, help_text: str, kind: Kind, labels: LabelNames) -> None:
        self.name, self.help, self.kind, self.labels = name, help_text, kind, labels

    def header(self, out: TextWriter) -> None:
        out.header(self.name, self.help, self.kind)


_REQUESTS = _Family("meshd_requests_total", "HTTP requests proxied.", "counter", _HTTP)
_DURATION = _Family(
    "meshd_request_duration_seconds",
    "Time from request start to the end of the response.",
    "histogram",
    _HTTP,
)
_TCP_OPENED = _Family(
    "meshd_tcp_connections_opened_total", "Proxied TCP connections established.", "counter", _TCP
)
_TCP_CLOSED = _Family(
    "meshd_tcp_connections_closed_total", "Proxied TCP connections closed.", "counter", _TCP
)
_TCP_RECEIVED = _Family(
    "meshd_tcp_received_bytes_total",
    "Bytes the proxy received on proxied TCP connections.",
    "counter",
    _TCP,
)
_TCP_SENT = _Family(
    "meshd_tcp_sent_bytes_total",
    "Bytes the proxy sent on proxied TCP connections.",
    "counter",
    _TCP,
)
_DS_ACTIVE = _Family(
    "meshd_downstream_connections_active",
    "Downstream connections currently open.",
    "gauge",
    _LISTENER,
)
_DS_TOTAL = _Family(
    "meshd_downstream_connections_total", "Downstream connections accepted.", "counter", _LISTENER
)
_LIMIT_EVENTS = _Family(
    "meshd_listener_limit_events_total",
    "Connections closed or refused by a listener's connection limits, and failed "
    "accepts (over_limit, idle_evicted, first_byte_timeout, accept_failed).",
    "counter",
    LabelNames(("listener", "event")),
)
_UPSTREAM_ERRORS = _Family(
    "meshd_upstream_errors_total",
    "Failures talking to an upstream cluster, by reason.",
    "counter",
    LabelNames(("cluster", "reason")),
)
_POOL = _Family(
    "meshd_upstream_pool_connections",
    "Pooled upstream connections by endpoint and state (active or idle).",
    "gauge",
    LabelNames(("cluster", "endpoint", "state")),
)
_SNAP_VERSION = _Family(
    "meshd_snapshot_version",
    "Version of the snapshot in service (0 before the first).",
    "gauge",
    _NONE,
)
_SNAP_UPDATES = _Family(
    "meshd_snapshot_updates_total",
    "Snapshots received from the control plane, by result.",
    "counter",
    LabelNames(("result",)),
)
_AUTHZ = _Family(
    "meshd_authz_decisions_total",
    "Inbound access decisions, by listener and outcome (allow, deny, audit).",
    "counter",
    LabelNames(("listener", "action")),
)
_ENDPOINT_REQUESTS = _Family(
    "meshd_upstream_endpoint_requests_total",
    "HTTP requests by upstream cluster, endpoint (host:port) and status class (0xx: no response).",
    "counter",
    LabelNames(("cluster", "endpoint", "code_class")),
)
_CERT_EXPIRY = _Family(
    "meshd_certificate_expiry_timestamp_seconds",
    "Expiry (not_after, Unix seconds) of the workload certificate in use; absent without one.",
    "gauge",
    _NONE,
)
#: Each policy metric's family (counters' samples are named with ``_total``).
_POLICY = {
    name: _Family(
        f"{name}_total" if spec.kind == "counter" else name,
        spec.help,
        spec.kind,
        LabelNames(spec.labels),
    )
    for name, spec in POLICY_METRICS.items()
}


class MetricsView:
    """The ``/metrics`` body of one sidecar: its ``meshd_*`` families, then the process's."""

    __slots__ = ("_pool_stats", "_process", "_stats")

    def __init__(self, stats: Stats, pool_stats: PoolStats = _no_pools) -> None:
        self._stats = stats
        self._pool_stats = pool_stats
        self._process = ProcessMetrics()

    def render(self) -> bytes:
        """The text exposition of the current values (UTF-8)."""
        out = TextWriter()
        write_meshd(out, self._stats, self._pool_stats)
        self._process.write(out)
        return out.body()


def write_meshd(out: TextWriter, s: Stats, pool_stats: PoolStats = _no_pools) -> None:
    """Every ``meshd_*`` family of ``s`` (and of the pools ``pool_stats`` reports), in the
    order prometheus-client's collectors gave them."""
    # Copies: cheap, and immune to a recording call adding a key mid-iteration.
    http = [(_HTTP.around_le((*key[:5], str(key[5]))), h) for key, h in list(s._http.items())]
    _REQUESTS.header(out)
    for around_le, hist in http:
        out.sample(_REQUESTS.name, around_le[0], sum(hist.buckets))
    _DURATION.header(out)
    for around_le, hist in http:
        out.histogram(_DURATION.name, around_le, _BOUNDS, hist.buckets, hist.total)

    tcp = [(_TCP.render(key), rec) for key, rec in list(s._tcp.items())]
    for family, slot in (
        (_TCP_OPENED, _OPENED),
        (_TCP_CLOSED, _CLOSED),
        (_TCP_RECEIVED, _RECEIVED),
        (_TCP_SENT, _SENT),
    ):
        family.header(out)
        for tcp_labels, rec in tcp:
            out.sample(family.name, tcp_labels, rec[slot])

    downstream = [(_LISTENER.render((k,)), rec) for k, rec in list(s._downstream.items())]
    for family, slot in ((_DS_ACTIVE, 0), (_DS_TOTAL, 1)):
        family.header(out)
        for listener_labels, rec in downstream:
            out.sample(family.name, listener_labels, rec[slot])

    _counts(out, _LIMIT_EVENTS, list(s._limit_events.items()))
    _counts(out, _UPSTREAM_ERRORS, list(s._upstream_errors.items()))

    pools: list[tuple[tuple[str, ...], float]] = []
    for cluster, endpoint, active, idle in pool_stats():
        pools.append(((cluster, endpoint, "active"), active))
        pools.append(((cluster, endpoint, "idle"), idle))
    _counts(out, _POOL, pools)

    _SNAP_VERSION.header(out)
    out.sample(_SNAP_VERSION.name, "", s._snapshot_version)
    _counts(
        out,
        _SNAP_UPDATES,
        [(("applied",), s._snapshot_applied), (("rejected",), s._snapshot_rejected)],
    )
    authz = [
        ((listener, action), count)
        for listener, counts in list(s._authz.items())
        for action, count in zip(AUTHZ_ACTIONS, counts, strict=True)
    ]
    _counts(out, _AUTHZ, authz)

    endpoints: dict[tuple[str, ...], float] = {}
    for (cluster, host, port, klass), hist in list(s._endpoints.items()):
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        key = (cluster, address, f"{klass}xx")
        endpoints[key] = endpoints.get(key, 0) + sum(hist.buckets)
    _counts(out, _ENDPOINT_REQUESTS, list(endpoints.items()))

    _CERT_EXPIRY.header(out)
    not_after = s.cert_expiry()
    if not_after is not None:
        out.sample(_CERT_EXPIRY.name, "", not_after)

    write_policy(out, s.policy)


def write_policy(out: TextWriter, stats: PolicyStats) -> None:
    """The families of :data:`meshd.policystats.POLICY_METRICS`."""
    for name, _, series in stats.items():
        _counts(out, _POLICY[name], series)


def _counts(
    out: TextWriter, family: _Family, series: Iterable[tuple[tuple[str, ...], float]]
) -> None:
    family.header(out)
    for values, value in series:
        out.sample(family.name, family.labels.render(values), value)
