"""Inbound access control: the snapshot's access policy applied to requests and connections.

A guard is built once per snapshot for every inbound listener of a sidecar whose snapshot has
an ``inbound_policy`` (none: no guard, no per-request cost). Per request it evaluates the
policy (:mod:`meshcore.authz`) with the peer's SPIFFE ID, the method, the normalised path and
the headers. ``deny`` answers 403; ``audit`` passes and logs; a matching ``allow``/``audit``
rule with a ``jwt`` requirement also needs a valid bearer token (401 otherwise, 503 when no
JWKS could be loaded) whose claims satisfy the rule's ``claims`` (403 otherwise); the claims
the rule forwards replace any client-sent copies of their headers. At L4 (TCP listeners)
only the peer's identity is known: :meth:`InboundGuard.admit_connection`.

What outlives a snapshot lives in :class:`AuthzContext`, owned by the sidecar: the JWKS
sources (their cached keys survive a snapshot swap) and the per-listener log limiters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import structlog

from meshcore.authz import CompiledPolicy, Decision, normalize_path
from meshcore.model.policy import ClaimMatch, JwtRequirement
from meshcore.model.snapshot import InboundPolicy
from meshd.access.claims import claim_matches
from meshd.stats import AUTHZ_ALLOW, AUTHZ_AUDIT, AUTHZ_DENY, Stats

if TYPE_CHECKING:
    # pyjwt and cryptography load only when some policy requires a JWT.
    from meshd.authn import JwtValidator
    from meshd.authn.jwks import FileJwks, UrlJwks

__all__ = [
    "DENIED_REASON_HEADER",
    "AuthzContext",
    "InboundGuard",
    "LogLimiter",
    "Refusal",
]

log = structlog.get_logger("meshd.authz")

#: Response header saying why the sidecar refused a request (never holds a secret).
DENIED_REASON_HEADER: Final = b"x-meshd-denied-reason"
_AUTHORIZATION: Final = b"authorization"
_MAX_IDS: Final = 4096
_WWW_AUTHENTICATE: Final = b"www-authenticate"
_METHODS: Final = {
    m.encode(): m
    for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT")
}
_INVALID_TEXT: Final = {
    "malformed": "malformed token",
    "disallowed_algorithm": "algorithm not allowed",
    "unknown_kid": "unknown signing key",
    "bad_signature": "bad signature",
    "missing_claim": "token has no exp",
    "expired": "token expired",
    "not_yet_valid": "token not yet valid",
    "wrong_issuer": "wrong issuer",
    "wrong_audience": "wrong audience",
}
_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """The sidecar's own answer to a refused request."""

    status: int
    #: ``x-meshd-error`` reason (access log ``error``).
    error: str
    #: Human-readable reason, also in :data:`DENIED_REASON_HEADER`.
    detail: str
    headers: tuple[tuple[bytes, bytes], ...]


class HasHeaders(Protocol):
    """What the guard reads and edits of a request head."""

    method: bytes
    headers: list[tuple[bytes, bytes]]


class LogLimiter:
    """Lets at most ``per_second`` log lines through per one-second window; counts the rest."""

    __slots__ = ("_clock", "_count", "_pending", "_per_second", "_window_end", "suppressed")

    def __init__(self, per_second: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_second = per_second
        self._clock = clock
        self._window_end = float("-inf")
        self._count = 0
        self._pending = 0
        #: Lines suppressed in total.
        self.suppressed = 0

    def take(self) -> int:
        """-1: don't log (counted). Else log, noting how many lines were dropped before."""
        now = self._clock()
        if now >= self._window_end:
            self._window_end = now + 1.0
            self._count = 0
        if self._count >= self._per_second:
            self._pending += 1
            self.suppressed += 1
            return -1
        self._count += 1
        dropped, self._pending = self._pending, 0
        return dropped


class AuthzContext:
    """What the inbound guards of one sidecar keep across snapshots.

    JWKS sources are shared by every rule naming the same ``jwks_uri``/``jwks_file`` and kept
    for the life of the process, so a new snapshot neither drops cached keys nor refetches.
    The ``jwks_*`` settings apply to sources created afterwards.
    """

    def __init__(
        self,
        stats: Stats,
        *,
        log_per_second: int = 10,
        clock: Callable[[], float] = time.monotonic,
        jwks_min_refresh_s: float = 30.0,
        jwks_file_check_s: float = 1.0,
    ) -> None:
        self.stats = stats
        self.log_per_second = log_per_second
        self.clock = clock
        #: Least time between two fetches of a JWKS URL (an unknown ``kid`` asks for one).
        self.jwks_min_refresh_s = jwks_min_refresh_s
        #: How often a JWKS file is checked for changes.
        self.jwks_file_check_s = jwks_file_check_s
        self._jwks: dict[tuple[str, str], FileJwks | UrlJwks] = {}
        self._limiters: dict[str, LogLimiter] = {}

    def jwks_source(self, requirement: JwtRequirement) -> FileJwks | UrlJwks:
        """The (shared, cached) key source ``requirement`` names."""
        from meshd.authn.jwks import FileJwks, UrlJwks

        if requirement.jwks_file is not None:
            key = ("file", requirement.jwks_file)
        else:
            assert requirement.jwks_uri is not None, "JwtRequirement demands one source"
            key = ("uri", requirement.jwks_uri)
        source = self._jwks.get(key)
        if source is None:
            if key[0] == "file":
                source = FileJwks(key[1], check_interval_s=self.jwks_file_check_s)
            else:
                source = UrlJwks(key[1], min_refresh_interval_s=self.jwks_min_refresh_s)
            self._jwks[key] = source
        return source

    def limiter(self, listener: str) -> LogLimiter:
        """The log limiter of ``listener`` (one per listener name, kept across snapshots)."""
        found = self._limiters.get(listener)
        if found is None:
            found = self._limiters[listener] = LogLimiter(self.log_per_second, self.clock)
        return found

    def guard(self, policy: InboundPolicy, *, listener: str, service: str) -> InboundGuard:
        """A guard enforcing ``policy`` on ``listener`` of ``service``'s sidecar."""
        jwt: list[_JwtCheck | None] = []
        for rule in policy.rules:
            req = rule.jwt
            if req is None or rule.action == "deny":
                jwt.append(None)
                continue
            from meshd.authn import JwtValidator

            jwt.append(_JwtCheck(JwtValidator(req, self.jwks_source(req)), req.claims))
        return InboundGuard(
            CompiledPolicy(policy),
            tuple(jwt),
            listener=listener,
            service=service,
            counts=self.stats.authz_counters(listener),
            limiter=self.limiter(listener),
        )


class _JwtCheck:
    __slots__ = ("claims", "validator")

    def __init__(self, validator: JwtValidator, claims: tuple[ClaimMatch, ...]) -> None:
        self.validator = validator
        self.claims = claims


class InboundGuard:
    """Applies one snapshot's inbound policy on one listener."""

    __slots__ = (
        "_counts",
        "_ids",
        "_jwt",
        "_limiter",
        "_policy",
        "_strip",
        "listener",
        "service",
    )

    def __init__(
        self,
        policy: CompiledPolicy,
        jwt: tuple[_JwtCheck | None, ...],
        *,
        listener: str,
        service: str,
        counts: list[int],
        limiter: LogLimiter,
    ) -> None:
        self._policy = policy
        #: Per rule: its JWT check (None: the rule needs no token).
        self._jwt = jwt
        self.listener = listener
        self.service = service
        self._counts = counts
        self._limiter = limiter
        # Peer SPIFFE IDs decoded once per guard (a few identities, bounded).
        self._ids: dict[bytes, str] = {}
        # Headers the sidecar sets from verified claims: a client must not send its own.
        self._strip = frozenset(
            name.lower()
            for check in jwt
            if check is not None
            for name in check.validator.forwarded_header_names
        )

    def admit_connection(self, peer: bytes | None) -> bool:
        """L4: may a connection from ``peer`` (SPIFFE ID, None: unauthenticated) go on?"""
        source = self._source(peer)
        decision = self._policy.evaluate_l4(source)
        if decision.action == "deny":
            self._counts[AUTHZ_DENY] += 1
            self._log("access denied", source, "", "", decision.rule_index, decision.reason)
            return False
        if decision.action == "audit":
            self._counts[AUTHZ_AUDIT] += 1
            self._log("access audited", source, "", "", decision.rule_index, decision.reason)
        else:
            self._counts[AUTHZ_ALLOW] += 1
        return True

    def _source(self, peer: bytes | None) -> str | None:
        if peer is None:
            return None
        found = self._ids.get(peer)
        if found is None:
            found = peer.decode("ascii", "replace")
            if len(self._ids) < _MAX_IDS:
                self._ids[peer] = found
        return found

    async def admit(self, head: HasHeaders, peer: bytes | None, target: bytes) -> Refusal | None:
        """L7: None if the request may go on (its headers edited), else the answer to send.

        ``target`` is the request target in origin form (``/path?query``).
        """
        if self._strip:
            strip = self._strip
            head.headers = [(n, v) for n, v in head.headers if n.lower() not in strip]
        source = self._source(peer)
        method = _METHODS.get(head.method) or head.method.decode("latin-1")
        path = normalize_path(target.partition(b"?")[0]).decode("latin-1")
        decision = self._policy.evaluate(
            source_id=source, method=method, path=path, headers=head.headers
        )
        if decision.action == "deny":
            return self._deny(403, "access_denied", decision.reason, decision, source, method, path)
        index = decision.rule_index
        check = self._jwt[index] if index is not None else None
        if check is not None:
            refusal = await self._check_jwt(check, head, decision, source, method=method, path=path)
            if refusal is not None:
                return refusal
        if decision.action == "audit":
            self._counts[AUTHZ_AUDIT] += 1
            self._log("access audited", source, method, path, index, decision.reason)
        else:
            self._counts[AUTHZ_ALLOW] += 1
        return None

    async def _check_jwt(
        self,
        check: _JwtCheck,
        head: HasHeaders,
        decision: Decision,
        source: str | None,
        *,
        method: str,
        path: str,
    ) -> Refusal | None:
        from meshd.authn import JwksUnavailable, JwtInvalid, JwtMissing

        request = (decision, source, method, path)
        authorization = next((v for n, v in head.headers if n.lower() == _AUTHORIZATION), None)
        try:
            claims = await check.validator.validate(authorization)
        except JwtMissing:
            # RFC 6750 3.1: no error code when the request carried no credentials at all.
            challenge = ((_WWW_AUTHENTICATE, b'Bearer realm="meshd"'),)
            return self._deny(401, "jwt_missing", "jwt: no bearer token", *request, challenge)
        except JwtInvalid as exc:
            text = _INVALID_TEXT[exc.reason]
            value = b'Bearer realm="meshd", error="invalid_token", error_description="%s"'
            challenge = ((_WWW_AUTHENTICATE, value % text.encode("ascii")),)
            return self._deny(401, f"jwt_{exc.reason}", f"jwt: {text}", *request, challenge)
        except JwksUnavailable as exc:
            # The cause (URL, error) goes to the log only, not to the client.
            reason = "jwt: JWKS unavailable"
            return self._deny(503, "jwks_unavailable", reason, *request, cause=str(exc))
        for match in check.claims:
            if not claim_matches(claims, match):
                reason = f"jwt: claim {match.name} does not match"
                return self._deny(403, "jwt_claim_mismatch", reason, *request)
        forwarded = check.validator.forwarded_headers(claims)
        if forwarded:
            head.headers.extend(forwarded)
        return None

    def _deny(  # noqa: PLR0917 -- private; every refusal passes the same request facts
        self,
        status: int,
        error: str,
        reason: str,
        decision: Decision,
        source: str | None,
        method: str,
        path: str,
        challenge: tuple[tuple[bytes, bytes], ...] = (),
        *,
        cause: str = "",
    ) -> Refusal:
        self._counts[AUTHZ_DENY] += 1
        rule = decision.rule_index
        self._log("access denied", source, method, path, rule, reason, status=status, cause=cause)
        value = _header_value(reason)
        return Refusal(status, error, reason, ((DENIED_REASON_HEADER, value), *challenge))

    def _log(  # noqa: PLR0917 -- private; the fields of one log line
        self,
        event: str,
        source: str | None,
        method: str,
        path: str,
        rule: int | None,
        reason: str,
        *,
        status: int = 0,
        cause: str = "",
    ) -> None:
        dropped = self._limiter.take()
        if dropped < 0:
            return
        fields: dict[str, Any] = {
            "listener": self.listener,
            "source": source or "",
            "destination": self.service,
            "rule": rule,
            "reason": reason,
        }
        if method:
            fields["method"] = method
            fields["path"] = path
        if status:
            fields["status"] = status
        if cause:
            fields["cause"] = cause
        if dropped:
            fields["suppressed"] = dropped
        if event == "access denied":
            log.warning(event, **fields)
        else:
            log.info(event, **fields)


def _header_value(text: str) -> bytes:
    # Reasons hold rule numbers, SPIFFE IDs and claim names: printable ASCII keeps it a header.
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text).encode("ascii")
