"""The versioned snapshot a sidecar runs: listeners, route tables, clusters and endpoints.

A snapshot is an immutable value. The sidecar validates a new one fully (this module's
validators plus its own checks) before swapping it in.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field, field_validator, model_validator

from meshcore.model.base import Frozen, SocketAddr
from meshcore.model.match import HeaderMatch, PathMatch, QueryMatch, RouteMatch
from meshcore.model.match import duplicates as _duplicates
from meshcore.model.policy import (
    AccessRule,
    ConnectionLimits,
    EscapedSlashes,
    HashPolicy,
    HealthCheck,
    LbPolicy,
    LocalityPolicy,
    MtlsMode,
    OutlierDetection,
    RetryBudget,
    RouteRuleBase,
)

__all__ = [
    "LOCAL_APP_CLUSTER",
    "Backend",
    "Cluster",
    "ClusterTls",
    "Endpoint",
    "HeaderMatch",
    "InboundPolicy",
    "Listener",
    "PathMatch",
    "QueryMatch",
    "RateLimitRule",
    "Route",
    "RouteMatch",
    "RouteMirror",
    "RouteTable",
    "Snapshot",
    "WorkloadIdentity",
]

#: Name of the cluster the sidecar builds itself from its bootstrap's ``app`` address.
LOCAL_APP_CLUSTER = "local_app"


class Endpoint(Frozen):
    """One upstream address of a cluster."""

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    weight: int = Field(default=1, ge=1, le=10_000)
    #: 0: primary; 1, 2, ...: failover tiers, used in order when no lower tier is healthy.
    priority: int = Field(default=0, ge=0, le=100)
    #: Registry tags of the instance (informational; subsets are resolved by the compiler).
    tags: tuple[str, ...] = ()
    #: With ``Cluster.tls``: the SPIFFE ID this endpoint's sidecar presents when it isn't the
    #: cluster's (a failover tier of another service). None: ``tls.spiffe_id``.
    spiffe_id: str | None = Field(default=None, pattern=r"^spiffe://")
    #: With ``Cluster.tls``: reach this endpoint without TLS (a plain instance, no sidecar,
    #: of a service in PERMISSIVE mode, or of a failover service with mTLS disabled). The
    #: other endpoints of the cluster keep mTLS: the decision is per endpoint.
    plaintext: bool = False
    #: The instance's zone (registry service meta ``zone``, else its node's), for locality.
    zone: str | None = None


class ClusterTls(Frozen):
    """The cluster's endpoints are sidecars: originate mTLS and expect this SPIFFE ID."""

    spiffe_id: str = Field(min_length=1, pattern=r"^spiffe://")


class Cluster(Frozen):
    """A set of equivalent endpoints plus how to talk to them."""

    name: str = Field(min_length=1)
    #: Destination service name, used as the ``destination`` metrics label.
    service: str = Field(min_length=1)
    endpoints: tuple[Endpoint, ...] = ()
    lb_policy: LbPolicy = "round_robin"
    #: With ``ring_hash`` and ``maglev`` (required by them): what is hashed.
    hash_policy: HashPolicy | None = None
    #: Prefer the caller's zone (None: ignore zones).
    locality: LocalityPolicy | None = None
    #: Below this share of healthy endpoints, every endpoint of the tiers is used (Envoy's
    #: healthy panic threshold).
    panic_threshold_percent: float = Field(default=50.0, ge=0, le=100)
    retry_budget: RetryBudget = RetryBudget()
    connect_timeout_s: float = Field(default=5.0, gt=0)
    #: Upper bound of open connections per endpoint (pooled plus in use); the cluster-wide
    #: bound of this sidecar is ``limits.max_connections``.
    max_connections: int = Field(default=1024, ge=1)
    #: Idle pooled connections per endpoint beyond this are closed.
    max_idle_per_endpoint: int = Field(default=128, ge=0)
    #: Pooled connections idle for longer are closed.
    idle_timeout_s: float = Field(default=60.0, gt=0)
    #: Subset of ``service`` the endpoints were filtered by (compiler names it ``svc~subset``).
    subset: str | None = None
    limits: ConnectionLimits | None = None
    outlier_detection: OutlierDetection | None = None
    health_check: HealthCheck | None = None
    #: Set when the endpoints are sidecars: mTLS to them (when this sidecar has an identity).
    tls: ClusterTls | None = None

    @field_validator("name")
    @classmethod
    def _reserved(cls, value: str) -> str:
        if value == LOCAL_APP_CLUSTER:
            raise ValueError(f"{LOCAL_APP_CLUSTER!r} is reserved for the sidecar's own app")
        return value

    @model_validator(mode="after")
    def _hashing(self) -> Cluster:
        if self.lb_policy in ("ring_hash", "maglev") and self.hash_policy is None:
            raise ValueError(f"lb_policy {self.lb_policy} needs hash_policy")
        return self


class Backend(Frozen):
    """A weighted share of a route's traffic."""

    cluster: str = Field(min_length=1)
    weight: int = Field(default=1, ge=0, le=10_000)


class RouteMirror(Frozen):
    """Copy ``percent`` of a route's requests to ``cluster``; answers are discarded."""

    cluster: str = Field(min_length=1)
    percent: float = Field(default=100.0, ge=0, le=100)


class Route(RouteRuleBase[Backend, RouteMirror]):
    """First matching route in a table wins.

    ``backends`` may be empty only when ``redirect`` is set; a redirect, when set, answers
    the request and the backends are not used.
    """

    name: str = Field(min_length=1)
    #: Whole-request deadline, from the request head to the end of the response.
    timeout_s: float = Field(default=15.0, gt=0)

    @model_validator(mode="after")
    def _some_weight(self) -> Route:
        if not self.backends:
            if self.redirect is None:
                raise ValueError("backends should have at least 1 item unless redirect is set")
        elif sum(b.weight for b in self.backends) == 0:
            raise ValueError("at least one backend needs a weight above 0")
        return self


class RouteTable(Frozen):
    """Ordered routes an HTTP listener consults for each request."""

    name: str = Field(min_length=1)
    routes: tuple[Route, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> RouteTable:
        dup = _duplicates([r.name for r in self.routes])
        if dup:
            raise ValueError(f"duplicate route names: {', '.join(dup)}")
        return self


#: Listener settings that only an HTTP listener enforces.
_HTTP_ONLY_FIELDS: Final = frozenset(
    {
        "request_headers_timeout_s",
        "max_request_headers_kb",
        "max_request_header_count",
        "max_response_headers_kb",
        "max_response_header_count",
        "max_requests_per_connection",
        "path_with_escaped_slashes",
    }
)


class Listener(Frozen):
    """A socket the sidecar accepts on, and what it does with what arrives.

    An HTTP listener sends requests through ``route_table``, or all of them to ``cluster``.
    A TCP listener forwards bytes to ``cluster``. Inbound listeners default to the local app.
    """

    name: str = Field(min_length=1)
    direction: Literal["outbound", "inbound"]
    address: SocketAddr
    protocol: Literal["http", "tcp"] = "http"
    route_table: str | None = None
    cluster: str | None = None
    #: Keep-alive connections idle for longer are closed (TCP: no bytes either way).
    idle_timeout_s: float = Field(default=300.0, gt=0)
    #: Time allowed for a request's head to arrive once its first byte has.
    request_headers_timeout_s: float = Field(default=10.0, gt=0)
    #: Size limit of a request line plus headers; over it the answer is 431.
    max_request_headers_kb: int = Field(default=60, ge=1, le=1024)
    # -- HTTP message limits (meshd.http) --
    #: Header fields of a request (and, separately, of its trailers); over it 431.
    max_request_header_count: int = Field(default=100, ge=1, le=10000)
    #: Size limit of an upstream response's status line plus headers; over it 502.
    max_response_headers_kb: int = Field(default=60, ge=1, le=1024)
    #: Header fields of an upstream response; over it 502.
    max_response_header_count: int = Field(default=100, ge=1, le=10000)
    #: Requests one downstream connection may carry; the last one is answered with
    #: ``Connection: close``.
    max_requests_per_connection: int = Field(default=1000, ge=1, le=1_000_000)
    # -- connection limits, enforced by the accept loop (meshcore.net.accept) --
    #: Open downstream connections at most. None: derived from meshd's RLIMIT_NOFILE, below it.
    max_connections: int | None = Field(default=None, ge=1)
    #: A new connection that sends nothing for this long is closed. None: 10 s on http
    #: listeners, no limit on tcp ones (behind them the server may speak first).
    first_byte_timeout_s: float | None = Field(default=None, gt=0)
    # -- end of connection limits --
    #: ``%2F``/``%5C`` in request paths: keep, reject, unescape or redirect.
    path_with_escaped_slashes: EscapedSlashes = "keep"

    @model_validator(mode="after")
    def _target(self) -> Listener:
        if self.route_table is not None and self.cluster is not None:
            raise ValueError("set route_table or cluster, not both")
        if self.protocol == "tcp" and self.route_table is not None:
            raise ValueError("a tcp listener forwards to a cluster; route_table is for http")
        if self.protocol == "tcp":
            fields = type(self).model_fields
            http_only = sorted(
                name for name in _HTTP_ONLY_FIELDS if getattr(self, name) != fields[name].default
            )
            if http_only:
                # Never accept what isn't enforced: a tcp listener parses no HTTP.
                raise ValueError(f"{', '.join(http_only)}: http listener settings, not for tcp")
        if self.direction == "outbound" and self.route_table is None and self.cluster is None:
            raise ValueError("an outbound listener needs a route_table or a cluster")
        return self

    @property
    def target_cluster(self) -> str | None:
        """The cluster that takes everything, when no route table is set."""
        if self.route_table is not None:
            return None
        return self.cluster or LOCAL_APP_CLUSTER


class WorkloadIdentity(Frozen):
    """Who the sidecar is, as its SPIFFE ID says."""

    service: str = Field(min_length=1)
    namespace: str = Field(default="default", min_length=1)
    trust_domain: str = Field(default="mesh.local", min_length=1)

    @property
    def spiffe_id(self) -> str:
        """``spiffe://<trust domain>/ns/<namespace>/svc/<service>``."""
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/svc/{self.service}"


class InboundPolicy(Frozen):
    """Access control of inbound requests: first matching rule decides, else ``default_action``.

    Rule sources are already resolved to SPIFFE IDs or ``"*"``.
    """

    rules: tuple[AccessRule, ...] = ()
    default_action: Literal["allow", "deny"] = "deny"


class RateLimitRule(Frozen):
    """A token bucket over inbound requests matching ``match`` (None: all of them)."""

    name: str = Field(min_length=1)
    requests_per_second: float = Field(gt=0)
    burst: int = Field(ge=1)
    match: RouteMatch | None = None
    #: One bucket per source identity instead of one shared bucket.
    per_source: bool = False


class Snapshot(Frozen):
    """Everything one sidecar needs, at one version."""

    version: int = Field(ge=0)
    listeners: tuple[Listener, ...] = ()
    route_tables: tuple[RouteTable, ...] = ()
    clusters: tuple[Cluster, ...] = ()
    identity: WorkloadIdentity | None = None
    mtls: MtlsMode = "disabled"
    inbound_policy: InboundPolicy | None = None
    rate_limits: tuple[RateLimitRule, ...] = ()

    @model_validator(mode="after")
    def _references(self) -> Snapshot:
        for kinds, names in (
            ("listeners", [x.name for x in self.listeners]),
            ("route tables", [x.name for x in self.route_tables]),
            ("clusters", [x.name for x in self.clusters]),
            ("listener addresses", [str(x.address) for x in self.listeners]),
            ("rate limits", [x.name for x in self.rate_limits]),
        ):
            dup = _duplicates(names)
            if dup:
                raise ValueError(f"duplicate {kinds}: {', '.join(dup)}")
        clusters = {c.name for c in self.clusters} | {LOCAL_APP_CLUSTER}
        tables = {t.name for t in self.route_tables}
        for listener in self.listeners:
            if listener.route_table is not None and listener.route_table not in tables:
                raise ValueError(
                    f"listener {listener.name!r} names unknown route table {listener.route_table!r}"
                )
            if listener.cluster is not None and listener.cluster not in clusters:
                raise ValueError(
                    f"listener {listener.name!r} names unknown cluster {listener.cluster!r}"
                )
        for table in self.route_tables:
            for route in table.routes:
                named = [b.cluster for b in route.backends]
                if route.mirror is not None:
                    named.append(route.mirror.cluster)
                for cluster in named:
                    if cluster not in clusters:
                        raise ValueError(
                            f"route {table.name}/{route.name} names unknown cluster {cluster!r}"
                        )
        return self

    def cluster(self, name: str) -> Cluster | None:
        """The cluster called ``name``, if the snapshot has it."""
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        return None

    def route_table(self, name: str) -> RouteTable | None:
        """The route table called ``name``, if the snapshot has it."""
        for table in self.route_tables:
            if table.name == name:
                return table
        return None
