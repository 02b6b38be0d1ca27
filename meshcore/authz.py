"""Inbound authorization: an :class:`~meshcore.model.snapshot.InboundPolicy` applied to a request.

Pure and synchronous; meshd's inbound path and controld's ``explain`` share it.

Semantics: the rules are tried in order; the first rule whose ``sources`` contain the peer's
SPIFFE ID (``"*"`` matches any peer, also an unauthenticated one) and whose ``permissions``
match the request (no permissions: any request) decides. ``audit`` lets the request through
and asks for it to be logged. When no rule matches, the policy's ``default_action`` decides;
no policy at all allows everything. A rule's JWT requirement is only reported here (token
validation belongs to the proxy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from meshcore.matchers import RequestMatcher
from meshcore.model.snapshot import InboundPolicy

__all__ = ["ANY_SOURCE", "CompiledPolicy", "Decision", "evaluate"]

#: The source that matches every peer, authenticated or not.
ANY_SOURCE = "*"

Action = Literal["allow", "deny", "audit"]


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


class _Rule:
    __slots__ = ("action", "any_source", "jwt_issuer", "permissions", "sources")

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


class CompiledPolicy:
    """A policy with its matchers built once; :meth:`evaluate` is then cheap per request."""

    __slots__ = ("_default", "_rules", "policy")

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
            who = source_id if source_id is not None else "an unauthenticated peer"
            what = "a permission" if rule.permissions else "any request"
            reason = f"rule {index} ({rule.action}) matches {who} and {what}"
            if rule.jwt_issuer is not None:
                reason += f"; requires JWT from {rule.jwt_issuer}"
            return Decision(rule.action, index, reason)
        return self._default


def evaluate(
    policy: InboundPolicy | None,
    *,
    source_id: str | None,
    method: str,
    path: str,
    headers: Mapping[str, str],
) -> Decision:
    """The decision of ``policy`` for one request (``None`` policy: allow).

    ``headers`` maps header names (any case) to values. Builds the matchers each call: a
    per-request caller should keep a :class:`CompiledPolicy` instead.
    """
    if policy is None:
        return _ALLOW_ALL
    pairs = [
        (name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"))
        for name, value in headers.items()
    ]
    return CompiledPolicy(policy).evaluate(
        source_id=source_id, method=method, path=path, headers=pairs
    )
