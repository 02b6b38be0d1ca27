"""The decision step of the request path: values in, a plan out. Pure and synchronous.

For each request the connection loop calls, in this order:

1. :func:`check_escaped_slashes` on the normalized target (the listener's
   ``path_with_escaped_slashes``): the target to use, or an :class:`Answer` (400, 307);
2. the inbound access policy (async, it may fetch keys: not part of this module);
3. :func:`decide`: the rate limit, the route (404 when none), its redirect, then the route's
   policies: fault verdicts, request header edits and rewrites, the backend cluster, the
   response header edits to apply later, retries and mirroring.

:func:`decide` returns either an :class:`Answer` (the proxy answers itself) or a :class:`Plan`
(forward it). Routes without per-request policies (faults, request header edits, rewrites,
mirroring) get a :class:`Plan` built once per snapshot, so the hot path allocates nothing here.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from meshcore.matchers import HeaderCheck, compile_header, header_index, headers_match
from meshcore.model.policy import FaultPolicy, HeaderMutation
from meshcore.model.snapshot import RouteMirror
from meshcore.pathnorm import normalize_target
from meshcore.routing import CompiledRoute, CompiledRouteTable
from meshd.errors import PROXY_ERRORS
from meshd.http.exchange import METHODS
from meshd.http.responses import redirect_location
from meshd.http.retry import RetryRule
from meshd.ratelimit import retry_after

if TYPE_CHECKING:
    from meshd.http.config import HttpListenerConfig

__all__ = [
    "Answer",
    "HeaderEdit",
    "Plan",
    "RoutePolicy",
    "check_escaped_slashes",
    "compile_policies",
    "decide",
]

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Answer:
    """The proxy answers the request itself instead of forwarding it."""

    status: int
    #: The ``x-meshd-error`` reason; "" for a redirect (not an error).
    reason: str
    detail: str = ""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    #: A redirect's ``Location``.
    location: bytes | None = None
    #: The route that answered (redirects), for metrics and the access log.
    route: str = ""


def _error(reason: str, detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> Answer:
    return Answer(PROXY_ERRORS[reason], reason, detail, headers)


@dataclass(frozen=True, slots=True)
class HeaderEdit:
    """A compiled :class:`HeaderMutation`: drop ``remove`` (and the names ``set`` replaces),
    then append the ``set`` pairs, then the ``add`` pairs."""

    remove: frozenset[bytes]
    append: tuple[tuple[bytes, bytes], ...]

    @classmethod
    def compile(cls, mutation: HeaderMutation) -> HeaderEdit:
        """The model already refused names the proxy owns (``FIXED_HEADERS``, ``x-meshd-*``)."""
        setting = [(k.encode("latin-1"), v.encode("utf-8")) for k, v in mutation.set.items()]
        adding = [(k.encode("latin-1"), v.encode("utf-8")) for k, v in mutation.add.items()]
        removed = {n.encode("latin-1") for n in mutation.remove}
        removed.update(n for n, _ in setting)
        return cls(frozenset(removed), (*setting, *adding))

    def apply(self, headers: Sequence[tuple[bytes, bytes]]) -> Headers:
        """A new header list with the edit applied (names compared case-insensitively)."""
        remove = self.remove
        out = [(n, v) for n, v in headers if n.lower() not in remove] if remove else list(headers)
        out.extend(self.append)
        return out


@dataclass(frozen=True, slots=True)
class Plan:
    """How to forward one request."""

    route: CompiledRoute
    cluster: str
    #: Whole-request deadline (seconds from the request head), across all tries.
    timeout_s: float
    retry: RetryRule | None = None
    #: The target to send upstream; None: the normalized target as it is.
    target: bytes | None = None
    #: The request headers to send upstream; None: the request's own.
    headers: Headers | None = None
    #: Edit of the upstream's response headers (never of the proxy's own answers).
    response_headers: HeaderEdit | None = None
    #: Fault: wait this long before going on.
    delay_s: float = 0.0
    #: Fault: after the delay, answer this instead of forwarding.
    abort: Answer | None = None
    #: Cluster to send a copy of the request to (the percentage is already decided).
    mirror: str | None = None


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """A route's policies compiled once per snapshot."""

    route: CompiledRoute
    fault: FaultPolicy | None = None
    fault_checks: tuple[HeaderCheck, ...] = ()
    fault_names: frozenset[bytes] = frozenset()
    request_headers: HeaderEdit | None = None
    response_headers: HeaderEdit | None = None
    path_prefix: bytes | None = None
    #: The route's prefix match (what ``path_prefix`` replaces); None: replace the whole path.
    matched_prefix: bytes | None = None
    host: bytes | None = None
    mirror: RouteMirror | None = None
    #: The route's retry policy, compiled.
    retry: RetryRule | None = None
    #: Plans of routes whose policies don't vary per request, by cluster.
    static: Mapping[str, Plan] = field(default_factory=dict)


def _compile(route: CompiledRoute) -> RoutePolicy:
    model = route.route
    rewrite = model.rewrite
    fault = model.fault
    checks = tuple(compile_header(h) for h in fault.headers) if fault is not None else ()
    prefix = model.match.path.prefix if model.match.path is not None else None
    policy = RoutePolicy(
        route=route,
        fault=fault,
        fault_checks=checks,
        fault_names=frozenset(c[0] for c in checks),
        request_headers=(
            HeaderEdit.compile(model.request_headers) if model.request_headers else None
        ),
        response_headers=(
            HeaderEdit.compile(model.response_headers) if model.response_headers else None
        ),
        path_prefix=(
            rewrite.path_prefix.encode("utf-8")
            if rewrite is not None and rewrite.path_prefix is not None
            else None
        ),
        matched_prefix=prefix.encode("utf-8") if prefix is not None else None,
        host=rewrite.host.encode("utf-8") if rewrite is not None and rewrite.host else None,
        mirror=model.mirror if model.mirror is not None and model.mirror.percent > 0 else None,
        retry=RetryRule(model.retries) if model.retries is not None else None,
    )
    varies = (
        fault is not None
        or policy.request_headers is not None
        or rewrite is not None
        or policy.mirror is not None
    )
    if not varies:
        static = {
            b.cluster: Plan(
                route,
                b.cluster,
                route.timeout_s,
                retry=policy.retry,
                response_headers=policy.response_headers,
            )
            for b in model.backends
        }
        object.__setattr__(policy, "static", static)
    return policy


def compile_policies(routes: CompiledRouteTable) -> dict[str, RoutePolicy]:
    """Every route's :class:`RoutePolicy`, by route name (unique within a table)."""
    return {r.name: _compile(r) for r in routes.routes}


_ESCAPED: Final = (b"%2F", b"%5C")


def check_escaped_slashes(target: bytes, action: str) -> bytes | Answer:
    """Apply the listener's ``path_with_escaped_slashes`` to a normalized target.

    ``keep``: as is; ``reject``: 400 ``escaped_slash``; ``unescape``: ``%2F`` -> ``/``,
    ``%5C`` -> ``\\``, then normalized again; ``redirect``: 307 to the unescaped target.
    """
    if action == "keep":
        return target
    path, sep, query = target.partition(b"?")
    # normalize_target writes every kept percent-encoding with upper-case hex digits.
    # find, not `in` (meshcore.pathnorm.normalize_target says why).
    if path.find(b"%2F") < 0 and path.find(b"%5C") < 0:
        return target
    if action == "reject":
        return _error("escaped_slash", "escaped slash in the path")
    unescaped = normalize_target(path.replace(b"%2F", b"/").replace(b"%5C", b"\\") + sep + query)
    if action == "redirect":
        return Answer(307, "", location=unescaped)
    return unescaped


def decide(
    cfg: HttpListenerConfig,
    *,
    method: bytes,
    target: bytes,
    headers: Headers,
    host: bytes | None,
    peer_identity: bytes | None,
    peer_ip: bytes = b"",
    rng: random.Random,
) -> Plan | Answer:
    """The plan for one request (``target`` normalized, origin form), or the proxy's answer.

    Rate limits key per-source buckets by the peer's SPIFFE ID, else its address.
    """
    limiter = cfg.rate_limiter
    if limiter is not None:
        wait = limiter.check(
            source=peer_identity or peer_ip or None, method=method, path=target, headers=headers
        )
        if wait is not None:
            return _error(
                "rate_limited", "rate limit exceeded", ((b"retry-after", retry_after(wait)),)
            )
    route = cfg.first_route
    if route is None:
        name = METHODS.get(method) or method.decode("latin-1")
        path, _, query = target.partition(b"?")
        route = cfg.routes.match(name, path.decode("latin-1"), headers, query)
        if route is None:
            return _error("no_route", "no route matches")
    redirect = route.route.redirect
    if redirect is not None:
        location = redirect_location(redirect, host, target)
        return Answer(redirect.status, "", location=location, route=route.name)
    policy = cfg.policies[route.name]
    cluster = route.pick_cluster()
    static = policy.static.get(cluster)
    if static is not None:
        return static
    return _plan(policy, route, cluster=cluster, target=target, headers=headers, rng=rng)


def _plan(
    policy: RoutePolicy,
    route: CompiledRoute,
    *,
    cluster: str,
    target: bytes,
    headers: Headers,
    rng: random.Random,
) -> Plan:
    delay_s = 0.0
    abort: Answer | None = None
    fault = policy.fault
    if fault is not None and (
        not policy.fault_checks
        or headers_match(policy.fault_checks, header_index(headers, policy.fault_names))
    ):
        if fault.delay is not None and rng.random() * 100 < fault.delay.percent:
            delay_s = fault.delay.fixed_delay_s
        if fault.abort is not None and rng.random() * 100 < fault.abort.percent:
            abort = Answer(fault.abort.status, "fault_abort", "fault injected")
    new_headers: Headers | None = None
    if policy.request_headers is not None:
        new_headers = policy.request_headers.apply(headers)
    if policy.host is not None:
        kept = [(n, v) for n, v in (new_headers or headers) if n.lower() != b"host"]
        kept.append((b"host", policy.host))
        new_headers = kept
    new_target: bytes | None = None
    if policy.path_prefix is not None:
        path, sep, query = target.partition(b"?")
        matched = policy.matched_prefix
        rest = path[len(matched) :] if matched is not None and path.startswith(matched) else b""
        new_target = policy.path_prefix + rest + sep + query
    mirror = policy.mirror
    mirror_to = None
    if mirror is not None and rng.random() * 100 < mirror.percent:
        mirror_to = mirror.cluster
    return Plan(
        route,
        cluster,
        route.timeout_s,
        retry=policy.retry,
        target=new_target,
        headers=new_headers,
        response_headers=policy.response_headers,
        delay_s=delay_s,
        abort=abort,
        mirror=mirror_to,
    )
