"""Inbound authorization: an :class:`~meshcore.model.snapshot.InboundPolicy` applied to a request.

Pure and synchronous; meshd's inbound path and controld's ``explain`` share it.

Semantics: the rules are tried in order; the first rule whose ``sources`` contain the peer's
SPIFFE ID (``"*"`` matches any peer, also an unauthenticated one) and whose ``permissions``
match the request (no permissions: any request) decides. ``audit`` lets the request through
and asks for it to be logged. When no rule matches, the policy's ``default_action`` decides;
no policy at all allows everything. A rule's JWT requirement is only reported here (token
validation belongs to the proxy).

At L4 (:meth:`CompiledPolicy.evaluate_l4`, TCP listeners) only the peer's identity is known:
rules with ``permissions`` or a ``jwt`` requirement never match there, the others are tried
as above.

Paths are matched as given; callers pass them through :func:`normalize_path` first (the
sidecar and ``explain`` both do), so ``/x/../admin`` can't slip past a rule on ``/admin``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from meshcore.matchers import RequestMatcher
from meshcore.model.snapshot import InboundPolicy

__all__ = ["ANY_SOURCE", "CompiledPolicy", "Decision", "evaluate", "normalize_path"]

#: The source that matches every peer, authenticated or not.
ANY_SOURCE = "*"

Action = Literal["allow", "deny", "audit"]
_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy says about one request."""

    action: Action
    #: Index of the deciding rule in the policy, None when the default (or no policy) decided.
    rule_index: int | None
    reason: str

    @property
    def allowed(self) -> bool:
        """True for ``allow`` and ``audit``."""
        return self.action != "deny"


_ALLOW_ALL = Decision("allow", None, "no inbound policy (allow)")
_MAX_CACHED_DECISIONS: Final = 4096


class _Rule:
    __slots__ = ("action", "any_source", "jwt_issuer", "l4", "permissions", "sources")

    def __init__(
        self,
        action: Action,
        sources: Sequence[str],
        permissions: tuple[RequestMatcher, ...],
        jwt_issuer: str | None,
    ) -> None:
        self.action: Action = action
        self.any_source = ANY_SOURCE in sources
        self.sources = frozenset(sources)
        self.permissions = permissions
        self.jwt_issuer = jwt_issuer
        #: Decidable from the peer's identity alone (TCP listeners).
        self.l4 = not permissions and jwt_issuer is None


class CompiledPolicy:
    """A policy with its matchers built once; :meth:`evaluate` is then cheap per request."""

    __slots__ = ("_decisions", "_default", "_rules", "policy")

    def __init__(self, policy: InboundPolicy) -> None:
        self.policy = policy
        self._rules = tuple(
            _Rule(
                rule.action,
                rule.sources,
                tuple(
                    RequestMatcher(path=p.path, methods=p.methods, headers=p.headers)
                    for p in rule.permissions
                ),
                rule.jwt.issuer if rule.jwt is not None else None,
            )
            for rule in policy.rules
        )
        default = policy.default_action
        self._default = Decision(default, None, f"no rule matched (default {default})")
        # A rule's decision depends on the peer only: built once per (rule, peer), not per
        # request. Peers are mesh identities (few); the bound keeps odd ones from growing it.
        self._decisions: dict[tuple[int, str | None], Decision] = {}

    def evaluate(
        self,
        *,
        source_id: str | None,
        method: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> Decision:
        """The decision for a request from ``source_id`` (None: unauthenticated peer)."""
        for index, rule in enumerate(self._rules):
            if not rule.any_source and (source_id is None or source_id not in rule.sources):
                continue
            if rule.permissions and not any(
                p.matches(method, path, headers) for p in rule.permissions
            ):
                continue
            found = self._decisions.get((index, source_id))
            if found is None:
                found = self._decide(index, rule, source_id)
            return found
        return self._default

    def _decide(self, index: int, rule: _Rule, source_id: str | None) -> Decision:
        who = source_id if source_id is not None else "an unauthenticated peer"
        what = "a permission" if rule.permissions else "any request"
        reason = f"rule {index} ({rule.action}) matches {who} and {what}"
        if rule.jwt_issuer is not None:
            reason += f"; requires JWT from {rule.jwt_issuer}"
        decision = Decision(rule.action, index, reason)
        if len(self._decisions) < _MAX_CACHED_DECISIONS:
            self._decisions[index, source_id] = decision
        return decision

    def evaluate_l4(self, source_id: str | None) -> Decision:
        """The decision for a connection from ``source_id`` when only L4 is seen (TCP).

        Rules with permissions or a JWT requirement are skipped: they can't match bytes.
        """
        for index, rule in enumerate(self._rules):
            if not rule.l4:
                continue
            if not rule.any_source and (source_id is None or source_id not in rule.sources):
                continue
            who = source_id if source_id is not None else "an unauthenticated peer"
            return Decision(rule.action, index, f"rule {index} ({rule.action}) matches {who}")
        return self._default


def evaluate(
    policy: InboundPolicy | None,
    *,
    source_id: str | None,
    method: str,
    path: str,
    headers: Mapping[str, str],
    l4: bool = False,
) -> Decision:
    """The decision of ``policy`` for one request (``None`` policy: allow).

    ``headers`` maps header names (any case) to values; ``l4``: the destination is a TCP
    service, decided as :meth:`CompiledPolicy.evaluate_l4`. Builds the matchers each call: a
    per-request caller should keep a :class:`CompiledPolicy` instead.
    """
    if policy is None:
        return _ALLOW_ALL
    if l4:
        return CompiledPolicy(policy).evaluate_l4(source_id)
    pairs = [
        (name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"))
        for name, value in headers.items()
    ]
    return CompiledPolicy(policy).evaluate(
        source_id=source_id, method=method, path=path, headers=pairs
    )


def normalize_path(path: bytes) -> bytes:
    """``path`` as an application will likely see it, so a policy can't be sidestepped.

    Percent-encoded unreserved characters are decoded (``/%61dmin`` is ``/admin``), repeated
    slashes merged and ``.``/``..`` segments resolved (RFC 3986 6.2.2). ``%2F`` and other
    reserved escapes stay encoded. Paths without ``%``, ``//`` or ``/.`` come back as they are.
    """
    if path[:1] != b"/" or (b"%" not in path and b"//" not in path and b"/." not in path):
        return path
    if b"%" in path:
        out = bytearray()
        i, n = 0, len(path)
        while i < n:
            c = path[i]
            if c == 0x25 and _is_hex(path[i + 1 : i + 3]):
                byte = int(path[i + 1 : i + 3], 16)
                if byte in _UNRESERVED:
                    out.append(byte)
                    i += 3
                    continue
            out.append(c)
            i += 1
        path = bytes(out)
    segments: list[bytes] = []
    for segment in path.split(b"/")[1:]:
        if segment == b"..":
            if segments:
                segments.pop()
        elif segment not in (b".", b""):
            segments.append(segment)
    trailing = path.endswith((b"/", b"/.", b"/..")) and bool(segments)
    return b"/" + b"/".join(segments) + (b"/" if trailing else b"")


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)
