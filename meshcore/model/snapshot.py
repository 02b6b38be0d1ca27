"""The versioned snapshot a sidecar runs: listeners, route tables, clusters and endpoints.

A snapshot is an immutable value. The sidecar validates a new one fully (this module's
validators plus its own checks) before swapping it in.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal

from pydantic import Field, field_validator, model_validator

from meshcore.model.base import Frozen, SocketAddr

#: Name of the cluster the sidecar builds itself from its bootstrap's ``app`` address.
LOCAL_APP_CLUSTER = "local_app"

_HTTP_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _check_regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
    return value


def _duplicates(names: list[str]) -> list[str]:
    return sorted(name for name, count in Counter(names).items() if count > 1)


class Endpoint(Frozen):
    """One upstream address of a cluster."""

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    weight: int = Field(default=1, ge=1, le=10_000)


class Cluster(Frozen):
    """A set of equivalent endpoints plus how to talk to them."""

    name: str = Field(min_length=1)
    #: Destination service name, used as the ``destination`` metrics label.
    service: str = Field(min_length=1)
    endpoints: tuple[Endpoint, ...] = ()
    lb_policy: Literal["round_robin", "random", "least_request"] = "round_robin"
    connect_timeout_s: float = Field(default=5.0, gt=0)
    #: Upper bound of open connections per endpoint (pooled plus in use).
    max_connections: int = Field(default=1024, ge=1)
    #: Idle pooled connections per endpoint beyond this are closed.
    max_idle_per_endpoint: int = Field(default=128, ge=0)
    #: Pooled connections idle for longer are closed.
    idle_timeout_s: float = Field(default=60.0, gt=0)

    @field_validator("name")
    @classmethod
    def _reserved(cls, value: str) -> str:
        if value == LOCAL_APP_CLUSTER:
            raise ValueError(f"{LOCAL_APP_CLUSTER!r} is reserved for the sidecar's own app")
        return value


class PathMatch(Frozen):
    """Exactly one of ``exact``, ``prefix`` or ``regex`` (full match)."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    _check = field_validator("regex")(_check_regex)

    @model_validator(mode="after")
    def _one_of(self) -> PathMatch:
        given = [v for v in (self.exact, self.prefix, self.regex) if v is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of exact, prefix, regex")
        return self


class HeaderMatch(Frozen):
    """Match one request header; with no matcher set, the header must be present."""

    name: str = Field(min_length=1)
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None
    invert: bool = False

    _check = field_validator("regex")(_check_regex)

    @field_validator("name")
    @classmethod
    def _token(cls, value: str) -> str:
        if not _HTTP_TOKEN.match(value):
            raise ValueError(f"not a valid header name: {value!r}")
        return value.lower()

    @model_validator(mode="after")
    def _at_most_one(self) -> HeaderMatch:
        given = [v for v in (self.exact, self.prefix, self.regex, self.present) if v is not None]
        if len(given) > 1:
            raise ValueError("set at most one of exact, prefix, regex, present")
        return self


class RouteMatch(Frozen):
    """All given conditions must hold. An empty match matches every request."""

    path: PathMatch | None = None
    methods: tuple[str, ...] = ()
    headers: tuple[HeaderMatch, ...] = ()

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for method in value:
            if not _HTTP_TOKEN.match(method):
                raise ValueError(f"not a valid HTTP method: {method!r}")
        return tuple(m.upper() for m in value)


class Backend(Frozen):
    """A weighted share of a route's traffic."""

    cluster: str = Field(min_length=1)
    weight: int = Field(default=1, ge=0, le=10_000)


class Route(Frozen):
    """First matching route in a table wins."""

    name: str = Field(min_length=1)
    match: RouteMatch = RouteMatch()
    backends: tuple[Backend, ...] = Field(min_length=1)
    #: Whole-request deadline, from the request head to the end of the response.
    timeout_s: float = Field(default=15.0, gt=0)

    @model_validator(mode="after")
    def _some_weight(self) -> Route:
        if sum(b.weight for b in self.backends) == 0:
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

    @model_validator(mode="after")
    def _target(self) -> Listener:
        if self.route_table is not None and self.cluster is not None:
            raise ValueError("set route_table or cluster, not both")
        if self.protocol == "tcp" and self.route_table is not None:
            raise ValueError("a tcp listener forwards to a cluster; route_table is for http")
        if self.direction == "outbound" and self.route_table is None and self.cluster is None:
            raise ValueError("an outbound listener needs a route_table or a cluster")
        return self

    @property
    def target_cluster(self) -> str | None:
        """The cluster that takes everything, when no route table is set."""
        if self.route_table is not None:
            return None
        return self.cluster or LOCAL_APP_CLUSTER


class Snapshot(Frozen):
    """Everything one sidecar needs, at one version."""

    version: int = Field(ge=0)
    listeners: tuple[Listener, ...] = ()
    route_tables: tuple[RouteTable, ...] = ()
    clusters: tuple[Cluster, ...] = ()

    @model_validator(mode="after")
    def _references(self) -> Snapshot:
        for kinds, names in (
            ("listeners", [x.name for x in self.listeners]),
            ("route tables", [x.name for x in self.route_tables]),
            ("clusters", [x.name for x in self.clusters]),
            ("listener addresses", [str(x.address) for x in self.listeners]),
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
                for backend in route.backends:
                    if backend.cluster not in clusters:
                        raise ValueError(
                            f"route {table.name}/{route.name} names unknown cluster "
                            f"{backend.cluster!r}"
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
