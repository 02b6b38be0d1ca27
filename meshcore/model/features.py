"""Snapshot features: the named parts of a snapshot a sidecar may or may not enforce.

A sidecar declares the features it enforces (meshd: ``meshd.features.ENFORCED``) and NACKs
a snapshot that uses one it lacks, naming the field (:func:`unsupported`); controld records
what each sidecar declares (the :data:`FEATURES_HEADER` of its polls) and warns when policy
would give a sidecar something it can't enforce. That is how a sidecar never silently
ignores policy.

Every field of every model a :class:`~meshcore.model.snapshot.Snapshot` is made of is listed
in :data:`FIELDS`, either as :data:`CORE` (every sidecar speaking the snapshot protocol does
it; inside a feature's value: part of that feature) or as the feature it is. A unit test walks
the model and fails on a field that is in neither, so a new field can't be ignored by
accident. When you add a field that an older meshd would ignore, give it a feature of its own
(even inside an existing feature's value: ``cluster.outlier_detection.success_rate``);
``CORE`` is only right when every meshd that accepts the enclosing field enforces it.

A feature is *used* when its field differs from the field's default (set, non-empty,
non-zero). A field listed as ``"name:"`` is a *value feature*: each value other than the
default is its own feature, ``name:value`` (``lb_policy:ewma``).

Pure: no I/O, no trio.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from pydantic import BaseModel

from meshcore.model.base import SocketAddr
from meshcore.model.match import HeaderMatch, PathMatch, QueryMatch, RouteMatch
from meshcore.model.policy import (
    AccessRule,
    ClaimMatch,
    ConnectionLimits,
    FaultAbort,
    FaultDelay,
    FaultPolicy,
    HashPolicy,
    HeaderMutation,
    HealthCheck,
    JwtRequirement,
    LocalityPolicy,
    OutlierDetection,
    Permission,
    Redirect,
    RetryBudget,
    RetryPolicy,
    Rewrite,
    SuccessRateEjection,
)
from meshcore.model.snapshot import (
    Backend,
    Cluster,
    ClusterTls,
    Endpoint,
    InboundPolicy,
    Listener,
    RateLimitRule,
    Route,
    RouteMirror,
    RouteTable,
    Snapshot,
    WorkloadIdentity,
)

__all__ = [
    "CORE",
    "FEATURES",
    "FEATURES_HEADER",
    "FIELDS",
    "feature_uses",
    "features_used",
    "format_features",
    "parse_features",
    "unsupported",
    "unsupported_message",
]

#: Done by every sidecar that speaks the snapshot protocol (see the module doc).
CORE: Final = "core"

#: The request header a sidecar declares its features with on each request to controld
#: (register, long-poll, NACK): the names, comma-separated. No header: unknown (an older
#: sidecar); an empty one: none.
FEATURES_HEADER: Final = "x-meshd-features"

#: Every field of the snapshot's models: ``CORE``, a feature name, or ``"name:"`` for a value
#: feature (``name:<value>`` for each value but the default).
FIELDS: Final[Mapping[type[BaseModel], Mapping[str, str]]] = {
    Snapshot: {
        "version": CORE,
        "listeners": CORE,
        "route_tables": CORE,
        "clusters": CORE,
        "identity": CORE,
        # STRICT, PERMISSIVE and disabled predate the feature list: every meshd has them.
        "mtls": CORE,
        "inbound_policy": CORE,
        "rate_limits": "rate_limits",
    },
    Listener: {
        "name": CORE,
        "direction": CORE,
        "address": CORE,
        "protocol": CORE,
        "route_table": CORE,
        "cluster": CORE,
        "idle_timeout_s": CORE,
        "request_headers_timeout_s": CORE,
        "max_request_headers_kb": CORE,
        "max_request_header_count": CORE,
        "max_response_headers_kb": CORE,
        "max_response_header_count": CORE,
        "max_requests_per_connection": CORE,
        "max_connections": CORE,
        "first_byte_timeout_s": CORE,
        "path_with_escaped_slashes": "listener.path_with_escaped_slashes:",
    },
    SocketAddr: {"host": CORE, "port": CORE},
    RouteTable: {"name": CORE, "routes": CORE},
    Route: {
        "name": CORE,
        "match": CORE,
        "backends": CORE,
        "timeout_s": CORE,
        "retries": "route.retries",
        "fault": "route.fault",
        "request_headers": "route.request_headers",
        "response_headers": "route.response_headers",
        "rewrite": "route.rewrite",
        "redirect": "route.redirect",
        "mirror": "route.mirror",
    },
    # Also the match of rate limits: the same request matcher does both.
    RouteMatch: {
        "path": CORE,
        "methods": CORE,
        "headers": "route.match.headers",
        "query": "route.match.query",
    },
    PathMatch: {"exact": CORE, "prefix": CORE, "regex": CORE},
    HeaderMatch: {
        "name": CORE,
        "exact": CORE,
        "prefix": CORE,
        "regex": CORE,
        "present": CORE,
        "invert": CORE,
    },
    QueryMatch: {"name": CORE, "exact": CORE, "regex": CORE, "present": CORE},
    Backend: {"cluster": CORE, "weight": CORE},
    RetryPolicy: {
        "attempts": CORE,
        "per_try_timeout_s": CORE,
        "retry_on": CORE,
        "retriable_status_codes": CORE,
        "backoff_base_s": CORE,
        "backoff_max_s": CORE,
    },
    FaultPolicy: {"delay": CORE, "abort": CORE, "headers": "route.fault.headers"},
    FaultDelay: {"percent": CORE, "fixed_delay_s": CORE},
    FaultAbort: {"percent": CORE, "status": CORE},
    HeaderMutation: {"set": CORE, "add": CORE, "remove": CORE},
    Rewrite: {"path_prefix": CORE, "host": CORE},
    Redirect: {"scheme": CORE, "host": CORE, "port": CORE, "path": CORE, "status": CORE},
    RouteMirror: {"cluster": CORE, "percent": CORE},
    Cluster: {
        "name": CORE,
        "service": CORE,
        "endpoints": CORE,
        "lb_policy": "lb_policy:",
        # Required by, and only read by, lb_policy ring_hash and maglev.
        "hash_policy": CORE,
        "locality": "cluster.locality",
        "panic_threshold_percent": "cluster.panic_threshold",
        # Always present (with defaults); it bounds retries, so it is enforced with
        # route.retries: a sidecar without retries has nothing to bound.
        "retry_budget": CORE,
        "connect_timeout_s": CORE,
        "max_connections": CORE,
        "max_idle_per_endpoint": CORE,
        "idle_timeout_s": CORE,
        "subset": CORE,
        "limits": "cluster.limits",
        "outlier_detection": "cluster.outlier_detection",
        "health_check": "cluster.health_check",
        "tls": CORE,
    },
    Endpoint: {
        "host": CORE,
        "port": CORE,
        "weight": CORE,
        # Any endpoint in a tier above 0.
        "priority": "cluster.failover",
        "tags": CORE,
        "spiffe_id": CORE,
        "plaintext": CORE,
        # Data for cluster.locality; alone it changes nothing.
        "zone": CORE,
    },
    HashPolicy: {"header": CORE, "cookie": CORE, "source_ip": CORE},
    LocalityPolicy: {"min_healthy_percent": CORE},
    RetryBudget: {"percent": CORE, "min_retries_per_second": CORE, "ttl_s": CORE},
    ConnectionLimits: {
        "max_connections": CORE,
        "max_pending_requests": CORE,
        "max_requests": CORE,
        "max_retries": CORE,
    },
    OutlierDetection: {
        "consecutive_5xx": CORE,
        "consecutive_gateway_errors": CORE,
        "consecutive_local_origin_failures": CORE,
        "interval_s": CORE,
        "base_ejection_s": CORE,
        "max_ejection_s": CORE,
        "max_ejection_percent": CORE,
        "success_rate": "cluster.outlier_detection.success_rate",
    },
    SuccessRateEjection: {"minimum_hosts": CORE, "request_volume": CORE, "stdev_factor": CORE},
    HealthCheck: {
        "kind": CORE,
        "path": CORE,
        "interval_s": CORE,
        "timeout_s": CORE,
        "unhealthy_threshold": CORE,
        "healthy_threshold": CORE,
    },
    ClusterTls: {"spiffe_id": CORE},
    WorkloadIdentity: {"service": CORE, "namespace": CORE, "trust_domain": CORE},
    InboundPolicy: {"rules": CORE, "default_action": CORE},
    AccessRule: {"sources": CORE, "action": CORE, "permissions": CORE, "jwt": "inbound_policy.jwt"},
    Permission: {"path": CORE, "methods": CORE, "headers": CORE},
    JwtRequirement: {
        "issuer": CORE,
        "audiences": CORE,
        "jwks_uri": CORE,
        "jwks_file": CORE,
        "forward_claims": CORE,
        "clock_skew_s": CORE,
        "claims": CORE,
    },
    ClaimMatch: {"name": CORE, "values": CORE},
    RateLimitRule: {
        "name": CORE,
        "requests_per_second": CORE,
        "burst": CORE,
        "match": CORE,
        "per_source": CORE,
    },
}

#: Every feature name, in a stable order (value features spelled out).
FEATURES: Final[tuple[str, ...]] = (
    "route.retries",
    "route.fault",
    "route.fault.headers",
    "route.request_headers",
    "route.response_headers",
    "route.rewrite",
    "route.redirect",
    "route.mirror",
    "route.match.headers",
    "route.match.query",
    "cluster.limits",
    "cluster.outlier_detection",
    "cluster.outlier_detection.success_rate",
    "cluster.health_check",
    "cluster.locality",
    "cluster.failover",
    "cluster.panic_threshold",
    "lb_policy:random",
    "lb_policy:least_request",
    "lb_policy:ewma",
    "lb_policy:ring_hash",
    "lb_policy:maglev",
    "listener.path_with_escaped_slashes:reject",
    "listener.path_with_escaped_slashes:unescape",
    "listener.path_with_escaped_slashes:redirect",
    "rate_limits",
    "inbound_policy.jwt",
)


class _Field:
    """How :func:`feature_uses` treats one field of one model."""

    __slots__ = ("by_value", "default", "descend", "feature", "name")

    def __init__(self, cls: type[BaseModel], name: str, spec: str) -> None:
        info = cls.model_fields[name]
        self.name = name
        self.default: Any = info.get_default(call_default_factory=True)
        self.by_value = spec.endswith(":")
        self.feature = None if spec == CORE else spec
        self.descend = any(True for _ in models_in(info.annotation))


_PLANS: dict[type[BaseModel], tuple[_Field, ...]] = {}


def models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The model classes a field's type annotation may hold (through unions, tuples, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from models_in(arg)


def _plan(cls: type[BaseModel]) -> tuple[_Field, ...]:
    plan = _PLANS.get(cls)
    if plan is None:
        # A model missing from FIELDS fails the unit test that walks the snapshot's models;
        # here its fields count as core rather than crash a sidecar.
        specs = FIELDS.get(cls, {})
        plan = _PLANS[cls] = tuple(
            _Field(cls, name, specs.get(name, CORE)) for name in cls.model_fields
        )
    return plan


def _walk(model: BaseModel, path: str) -> Iterator[tuple[str, str]]:
    for field in _plan(type(model)):
        value = getattr(model, field.name)
        here = f"{path}{field.name}"
        if field.feature is not None and value != field.default:
            yield (f"{field.feature}{value}" if field.by_value else field.feature), here
        if not field.descend or value is None:
            continue
        if isinstance(value, BaseModel):
            yield from _walk(value, f"{here}.")
        elif isinstance(value, tuple | list):
            for index, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from _walk(item, f"{here}.{index}.")


def feature_uses(snapshot: Snapshot) -> Iterator[tuple[str, str]]:
    """Every ``(feature, field path)`` use in ``snapshot``, in field order.

    Paths are written as pydantic writes error locations: ``route_tables.0.routes.1.mirror``.
    """
    return _walk(snapshot, "")


def features_used(snapshot: Snapshot) -> dict[str, str]:
    """Feature -> the path of the first field using it, for each feature ``snapshot`` uses."""
    found: dict[str, str] = {}
    for feature, path in feature_uses(snapshot):
        found.setdefault(feature, path)
    return found


def unsupported(snapshot: Snapshot, enforced: Iterable[str]) -> dict[str, str]:
    """The features ``snapshot`` uses that are not in ``enforced`` (feature -> first path)."""
    have = frozenset(enforced)
    return {f: p for f, p in features_used(snapshot).items() if f not in have}


def unsupported_message(missing: Mapping[str, str]) -> str:
    """``unsupported feature route.mirror at route_tables.0.routes.1.mirror; ...``."""
    return "; ".join(f"unsupported feature {f} at {p}" for f, p in missing.items())


def format_features(features: Iterable[str]) -> str:
    """The :data:`FEATURES_HEADER` value: sorted names, comma-separated."""
    return ",".join(sorted(set(features)))


def parse_features(text: str) -> frozenset[str]:
    """A :data:`FEATURES_HEADER` value as a set (blank items ignored)."""
    return frozenset(item.strip() for item in text.split(",") if item.strip())
