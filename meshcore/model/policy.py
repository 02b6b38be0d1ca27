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
LbPolicy = Literal["round_robin", "random", "least_request", "ewma", "ring_hash", "maglev"]
#: What the sidecar does with ``%2F``/``%5C`` (escaped ``/`` and ``\\``) in a request path,
#: as Envoy's ``path_with_escaped_slashes_action``: ``keep`` them encoded, ``reject`` the
#: request (400), ``unescape`` them (forward ``/``), or ``redirect`` the client to the
#: unescaped path (307).
EscapedSlashes = Literal["keep", "reject", "unescape", "redirect"]

#: A service name as registered (lower-case DNS label-ish, dots allowed).
SERVICE_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$"
_SERVICE = re.compile(SERVICE_PATTERN)


class RetryPolicy(Frozen):
    """Retry a failed request, on another endpoint when there is one.

    Idempotent methods are retried on every ``retry_on`` condition; other methods only on
    ``connect-failure`` (the request never left). A request whose body is larger than the
    replay bound, or whose response bytes have reached the client, is never retried.
    """

    #: Total tries, the first included.
    attempts: int = Field(default=2, ge=1, le=10)
    #: Deadline of one try; None: only the route's whole-request timeout applies.
    per_try_timeout_s: float | None = Field(default=None, gt=0)
    retry_on: tuple[RetryOn, ...] = ("connect-failure", "reset", "gateway-error")
    #: Response statuses retried besides those ``retry_on`` names.
    retriable_status_codes: tuple[int, ...] = ()
    #: Base of the jittered exponential backoff between tries.
    backoff_base_s: float = Field(default=0.025, ge=0, le=60)
    #: Upper bound of one backoff.
    backoff_max_s: float = Field(default=0.25, ge=0, le=300)

    @field_validator("retriable_status_codes")
    @classmethod
    def _statuses(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for code in value:
            if not 100 <= code <= 599:
                raise ValueError(f"not an HTTP status code: {code}")
        return value


class RetryBudget(Frozen):
    """Linkerd's retry budget: retries may add at most ``percent`` of the requests of the
    last ``ttl_s`` seconds, plus ``min_retries_per_second``, so retries can't multiply an
    outage. Per cluster, as seen by one sidecar.
    """

    percent: float = Field(default=20.0, ge=0, le=1000)
    min_retries_per_second: float = Field(default=10.0, ge=0, le=100_000)
    ttl_s: float = Field(default=10.0, gt=0, le=3600)


class FaultDelay(Frozen):
    """Delay ``percent`` of requests by ``fixed_delay_s`` before forwarding them."""

    percent: float = Field(ge=0, le=100)
    fixed_delay_s: float = Field(ge=0, le=3600)


class FaultAbort(Frozen):
    """Answer ``percent`` of requests with ``status`` without forwarding them."""

    percent: float = Field(ge=0, le=100)
    status: int = Field(ge=200, le=599)


class FaultPolicy(Frozen):
    """Fault injection for testing resilience; set ``delay``, ``abort`` or both.

    With ``headers``, only requests matching all of them are faulted.
    """

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    headers: tuple[HeaderMatch, ...] = ()

    @model_validator(mode="after")
    def _some(self) -> FaultPolicy:
        if self.delay is None and self.abort is None:
            raise ValueError("set delay, abort or both")
        return self


#: Headers a policy may not edit: the proxy writes them itself (framing, hop-by-hop, tracing)
#: and an edit would desynchronize the message from its framing; ``x-meshd-*`` too. ``host``
#: is editable (``rewrite.host`` or a header edit).
FIXED_HEADERS: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "expect",
        "x-forwarded-for",
        "x-request-id",
        "traceparent",
    }
)
FIXED_HEADER_PREFIX = "x-meshd-"


def _editable(name: str) -> str:
    if name in FIXED_HEADERS or name.startswith(FIXED_HEADER_PREFIX):
        raise ValueError(f"header {name!r} is written by the proxy and can't be edited")
    return name


class HeaderMutation(Frozen):
    """Edit headers: ``remove`` first, then ``set`` (replace), then ``add`` (append).

    Headers the proxy writes itself (:data:`FIXED_HEADERS`, ``x-meshd-*``) are refused.
    """

    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: tuple[str, ...] = ()

    @field_validator("set", "add")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        out = {_editable(header_name(k)): v for k, v in value.items()}
        for name, text in out.items():
            if "\r" in text or "\n" in text:
                raise ValueError(f"header {name!r}: value must not contain CR or LF")
        return out

    @field_validator("remove")
    @classmethod
    def _removed(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_editable(header_name(v)) for v in value)


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
    """Circuit-breaker thresholds of a cluster, counted by each calling sidecar over all of
    the cluster's endpoints. Over a limit the request fails at once with 503
    ``upstream_overflow``.
    """

    #: Upstream connections open (pooled plus in use).
    max_connections: int = Field(default=1024, ge=1)
    #: Requests waiting for a connection (all ``max_connections`` busy).
    max_pending_requests: int = Field(default=1024, ge=0)
    #: Requests in flight.
    max_requests: int = Field(default=1024, ge=1)
    #: Retries in flight.
    max_retries: int = Field(default=3, ge=0)


class SuccessRateEjection(Frozen):
    """Eject endpoints whose success rate is below ``mean - stdev_factor * stdev`` of the
    cluster's, every ``interval_s``, when enough endpoints have enough requests."""

    minimum_hosts: int = Field(default=5, ge=1)
    request_volume: int = Field(default=100, ge=1)
    stdev_factor: float = Field(default=1.9, gt=0)


class OutlierDetection(Frozen):
    """Eject endpoints that keep failing, for a time that grows with each ejection.

    An ejected endpoint returns after ``base_ejection_s`` times the number of times it was
    ejected (at most ``max_ejection_s``). At most ``max_ejection_percent`` of a cluster's
    endpoints are ejected at once.
    """

    #: Consecutive 5xx responses (gateway errors and local-origin failures count too).
    consecutive_5xx: int = Field(default=5, ge=1)
    #: Consecutive 502, 503 or 504 responses (and local-origin failures).
    consecutive_gateway_errors: int = Field(default=5, ge=1)
    #: Consecutive connect failures, resets and timeouts (no response at all).
    consecutive_local_origin_failures: int = Field(default=5, ge=1)
    #: How often success rates are computed and ejection times checked.
    interval_s: float = Field(default=10.0, gt=0)
    base_ejection_s: float = Field(default=30.0, gt=0)
    max_ejection_s: float = Field(default=300.0, gt=0)
    max_ejection_percent: int = Field(default=50, ge=0, le=100)
    #: None: no success-rate ejection.
    success_rate: SuccessRateEjection | None = None


class HealthCheck(Frozen):
    """Active health check the sidecar runs against each endpoint.

    ``http``: a GET of ``path`` must answer 2xx within ``timeout_s``; ``tcp``: a connection
    must open. An endpoint turns unhealthy after ``unhealthy_threshold`` failures in a row
    and healthy again after ``healthy_threshold`` successes; only endpoints the registry
    calls healthy are in a snapshot, so both must agree.
    """

    kind: Literal["http", "tcp"] = "http"
    path: str = Field(default="/", pattern=r"^/[^\s]*$")
    interval_s: float = Field(default=10.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    unhealthy_threshold: int = Field(default=3, ge=1)
    healthy_threshold: int = Field(default=2, ge=1)


class HashPolicy(Frozen):
    """What ``ring_hash`` and ``maglev`` hash: exactly one of a request header, a cookie
    or the client's source address. A request without it goes to a random endpoint."""

    header: str | None = None
    cookie: str | None = Field(default=None, pattern=r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
    source_ip: bool = False

    @field_validator("header")
    @classmethod
    def _header(cls, value: str | None) -> str | None:
        return None if value is None else header_name(value)

    @model_validator(mode="after")
    def _one(self) -> HashPolicy:
        given = [self.header is not None, self.cookie is not None, self.source_ip]
        if sum(given) != 1:
            raise ValueError("set exactly one of header, cookie, source_ip")
        return self


class LocalityPolicy(Frozen):
    """Prefer endpoints in the caller's zone (registry meta ``zone``) while at least
    ``min_healthy_percent`` of that zone's endpoints are healthy; spill the rest over to
    the other zones in proportion."""

    min_healthy_percent: int = Field(default=70, ge=0, le=100)


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
