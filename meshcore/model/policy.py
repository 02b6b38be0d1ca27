"""Policy values shared by the policy resources and the snapshots compiled from them.

Retries, fault injection, header edits, rewrites, redirects, connection limits, outlier
detection, health checks and access rules. All durations are float seconds (``_s``).
"""

from __future__ import annotations

import re
from typing import Generic, Literal, TypeVar

from pydantic import Field, field_validator, model_validator

from meshcore.model.base import Frozen
from meshcore.model.match import HeaderMatch, PathMatch, RouteMatch, check_methods, header_name

RetryOn = Literal["5xx", "gateway-error", "connect-failure", "reset", "retriable-4xx"]
MtlsMode = Literal["strict", "permissive", "disabled"]
Protocol = Literal["http", "tcp"]
LbPolicy = Literal["round_robin", "random", "least_request"]

#: A service name as registered (lower-case DNS label-ish, dots allowed).
SERVICE_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$"
_SERVICE = re.compile(SERVICE_PATTERN)


class RetryPolicy(Frozen):
    """Retry a failed request on another endpoint (idempotent methods and unsent bodies only)."""

    #: Total tries, the first included.
    attempts: int = Field(default=2, ge=1, le=10)
    #: Deadline of one try; None: only the route's whole-request timeout applies.
    per_try_timeout_s: float | None = Field(default=None, gt=0)
    retry_on: tuple[RetryOn, ...] = ("connect-failure", "reset", "gateway-error")
    #: Base of the jittered exponential backoff between tries.
    backoff_base_s: float = Field(default=0.025, ge=0, le=60)


class FaultDelay(Frozen):
    """Delay ``percent`` of requests by ``fixed_delay_s`` before forwarding them."""

    percent: float = Field(ge=0, le=100)
    fixed_delay_s: float = Field(ge=0, le=3600)


class FaultAbort(Frozen):
    """Answer ``percent`` of requests with ``status`` without forwarding them."""

    percent: float = Field(ge=0, le=100)
    status: int = Field(ge=200, le=599)


class FaultPolicy(Frozen):
    """Fault injection for testing resilience; set ``delay``, ``abort`` or both."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None

    @model_validator(mode="after")
    def _some(self) -> FaultPolicy:
        if self.delay is None and self.abort is None:
            raise ValueError("set delay, abort or both")
        return self


class HeaderMutation(Frozen):
    """Edit headers: ``remove`` first, then ``set`` (replace), then ``add`` (append)."""

    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: tuple[str, ...] = ()

    @field_validator("set", "add")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        out = {header_name(k): v for k, v in value.items()}
        for name, text in out.items():
            if "\r" in text or "\n" in text:
                raise ValueError(f"header {name!r}: value must not contain CR or LF")
        return out

    @field_validator("remove")
    @classmethod
    def _removed(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(header_name(v) for v in value)


class Rewrite(Frozen):
    """Rewrite the request before forwarding it.

    ``path_prefix`` replaces the part of the path the route's prefix match matched
    (the whole path for other matches); ``host`` replaces the Host header.
    """

    path_prefix: str | None = Field(default=None, pattern=r"^/")
    host: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _some(self) -> Rewrite:
        if self.path_prefix is None and self.host is None:
            raise ValueError("set path_prefix, host or both")
        return self


class Redirect(Frozen):
    """Answer with a redirect instead of forwarding; unset parts keep the request's."""

    scheme: Literal["http", "https"] | None = None
    host: str | None = Field(default=None, min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    path: str | None = Field(default=None, pattern=r"^/")
    status: Literal[301, 302, 303, 307, 308] = 302


class ConnectionLimits(Frozen):
    """Circuit-breaker thresholds of a cluster (per sidecar)."""

    max_connections: int = Field(default=1024, ge=1)
    max_pending_requests: int = Field(default=1024, ge=0)
    max_requests: int = Field(default=1024, ge=1)


class OutlierDetection(Frozen):
    """Eject endpoints that keep failing, for a growing time."""

    consecutive_5xx: int = Field(default=5, ge=1)
    consecutive_gateway_errors: int = Field(default=5, ge=1)
    interval_s: float = Field(default=10.0, gt=0)
    base_ejection_s: float = Field(default=30.0, gt=0)
    max_ejection_percent: int = Field(default=50, ge=0, le=100)


class HealthCheck(Frozen):
    """Active health check the sidecar runs against each endpoint."""

    kind: Literal["http", "tcp"] = "http"
    path: str = Field(default="/", pattern=r"^/[^\s]*$")
    interval_s: float = Field(default=10.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    unhealthy_threshold: int = Field(default=3, ge=1)
    healthy_threshold: int = Field(default=2, ge=1)


class Permission(Frozen):
    """An L7 condition of an access rule; all given parts must match. Empty: any request."""

    path: PathMatch | None = None
    methods: tuple[str, ...] = ()
    headers: tuple[HeaderMatch, ...] = ()

    _methods = field_validator("methods")(check_methods)


class ClaimMatch(Frozen):
    """A condition on one claim of a validated JWT.

    ``name`` is a dotted path into nested claims (``realm_access.roles``). The claim matches
    when its value contains one of ``values``: a string equal to one, a list of strings with
    one in it, or, for a claim named ``scope``, a space-separated string with one among its
    words. Absent claims and other value types never match.
    """

    name: str = Field(min_length=1, pattern=r"^[^.\s]+(\.[^.\s]+)*$")
    values: tuple[str, ...] = Field(min_length=1)


class JwtRequirement(Frozen):
    """A valid JWT from ``issuer`` is required (bearer token in Authorization).

    ``claims`` must all match (:class:`ClaimMatch`), or the request is denied (403).
    """

    issuer: str = Field(min_length=1)
    #: Accepted ``aud`` values; empty: any audience.
    audiences: tuple[str, ...] = ()
    jwks_uri: str | None = Field(default=None, min_length=1)
    jwks_file: str | None = Field(default=None, min_length=1)
    #: Claim name -> request header forwarded to the app.
    forward_claims: dict[str, str] = Field(default_factory=dict)
    clock_skew_s: float = Field(default=30.0, ge=0, le=3600)
    #: Conditions on the token's claims; all must hold.
    claims: tuple[ClaimMatch, ...] = ()

    @field_validator("forward_claims")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        return {k: header_name(v) for k, v in value.items()}

    @model_validator(mode="after")
    def _one_source(self) -> JwtRequirement:
        if (self.jwks_uri is None) == (self.jwks_file is None):
            raise ValueError("set exactly one of jwks_uri, jwks_file")
        return self


class AccessRule(Frozen):
    """Who may do what: the first rule whose sources and permissions match decides.

    ``sources`` are service names, SPIFFE IDs (``spiffe://...``) or ``"*"`` (anyone,
    authenticated or not). ``audit`` allows and logs.
    """

    sources: tuple[str, ...] = Field(min_length=1)
    action: Literal["allow", "deny", "audit"]
    permissions: tuple[Permission, ...] = ()
    jwt: JwtRequirement | None = None

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for source in value:
            if source == "*" or _SERVICE.match(source):
                continue
            if source.startswith("spiffe://") and len(source) > len("spiffe://"):
                continue
            raise ValueError(f"not a service name, spiffe:// ID or '*': {source!r}")
        return value


BackendT = TypeVar("BackendT", bound=Frozen)
MirrorT = TypeVar("MirrorT", bound=Frozen)


class RouteRuleBase(Frozen, Generic[BackendT, MirrorT]):
    """What an ``HTTPRoute`` rule and a snapshot ``Route`` share: a match and the policies.

    They differ in how they name their targets (``BackendT``, ``MirrorT``: services and
    subsets, or clusters) and narrow ``name`` and ``timeout_s``; those stay declared here so
    every subclass keeps the same field (and JSON key) order.
    """

    name: str | None = None
    match: RouteMatch = RouteMatch()
    backends: tuple[BackendT, ...] = ()
    #: None (rules only): the mesh's ``timeout_s``.
    timeout_s: float | None = Field(default=None, gt=0)
    #: None: in a rule, the mesh's ``retries``; in a route, no retries.
    retries: RetryPolicy | None = None
    fault: FaultPolicy | None = None
    request_headers: HeaderMutation | None = None
    response_headers: HeaderMutation | None = None
    rewrite: Rewrite | None = None
    redirect: Redirect | None = None
    mirror: MirrorT | None = None
