"""From a request's secret to an :class:`Authorizer`, and the built-in ACL objects.

With ACLs enabled every request is decided by its token: none means the anonymous token
(no policies unless an operator links some: default deny), an unknown or expired secret is
refused with Consul's 403 "ACL not found". Authorizers are cached per secret until any ACL
object changes. With ACLs disabled every request is allowed, as in Consul without
``acl.enabled``.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable

from controld.registry.acl_authz import MANAGEMENT, Authorizer, identity_rules
from controld.registry.acl_model import ANONYMOUS_ACCESSOR, MANAGEMENT_POLICY_ID, Policy, Token
from controld.registry.acl_rules import Rules, RulesError, parse_rules
from controld.registry.errors import Forbidden
from controld.registry.state import State

__all__ = ["AclResolver", "management_accessor"]

log = logging.getLogger("controld.registry.acl")


def management_accessor(secret: str) -> str:
    """The AccessorID given to a configured management token (stable across restarts)."""
    return str(uuid.UUID(bytes=hashlib.sha256(b"accessor:" + secret.encode()).digest()[:16]))


class AclResolver:
    """Resolves secrets against the state's ACL tables."""

    def __init__(
        self,
        state: State,
        datacenter: str,
        *,
        enabled: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.datacenter = datacenter
        self.enabled = enabled
        self.clock = clock
        self._cache: dict[str, tuple[Authorizer, float | None]] = {}
        self._cache_index = -1

    def bootstrap(self, management_secret: str | None) -> None:
        """Create what must exist: ``global-management``, the anonymous token and, when
        configured, the management token with that secret."""
        acl = self.state.acl
        now = self.clock()
        with self.state.write() as txn:
            if MANAGEMENT_POLICY_ID not in acl.policies:
                txn.put_acl(
                    Policy(
                        id=MANAGEMENT_POLICY_ID,
                        name="global-management",
                        description="Builtin Policy that grants unlimited access",
                    )
                )
            if ANONYMOUS_ACCESSOR not in acl.tokens:
                txn.put_acl(
                    Token(
                        accessor_id=ANONYMOUS_ACCESSOR,
                        secret_id="anonymous",  # noqa: S106 (Consul's well-known value)
                        description="Anonymous Token",
                        create_time=now,
                    )
                )
            if management_secret and acl.by_secret(management_secret) is None:
                txn.put_acl(
                    Token(
                        accessor_id=management_accessor(management_secret),
                        secret_id=management_secret,
                        description="Initial Management Token",
                        policies=(MANAGEMENT_POLICY_ID,),
                        create_time=now,
                    )
                )

    def token_for(self, secret: str) -> Token:
        """The token of ``secret`` (anonymous when empty); Forbidden when unknown or expired."""
        acl = self.state.acl
        token = acl.tokens.get(ANONYMOUS_ACCESSOR) if not secret else acl.by_secret(secret)
        if token is None or token.expired(self.clock()):
            raise Forbidden("ACL not found")
        return token

    def resolve(self, secret: str) -> Authorizer:
        """The authorizer of ``secret``; raises Forbidden("ACL not found")."""
        if not self.enabled:
            return MANAGEMENT
        index = self.state.tables.get("acl", 0)
        if index != self._cache_index:
            self._cache.clear()
            self._cache_index = index
        hit = self._cache.get(secret)
        if hit is not None and (hit[1] is None or self.clock() < hit[1]):
            return hit[0]
        token = self.token_for(secret)
        authz = self._build(token)
        if len(self._cache) < 10_000:
            self._cache[secret] = (authz, token.expiration_time)
        return authz

    def _build(self, token: Token) -> Authorizer:
        acl = self.state.acl
        policy_ids = list(token.policies)
        service_ids = list(token.service_identities)
        node_ids = list(token.node_identities)
        for role_id in token.roles:
            role = acl.roles.get(role_id)
            if role is None:
                continue
            policy_ids += role.policies
            service_ids += role.service_identities
            node_ids += role.node_identities
        if MANAGEMENT_POLICY_ID in policy_ids:
            return Authorizer(management=True, key="")
        rules: list[Rules] = [identity_rules(service_ids, node_ids, self.datacenter)]
        for policy_id in policy_ids:
            policy = acl.policies.get(policy_id)
            if policy is None:
                continue
            if policy.datacenters and self.datacenter not in policy.datacenters:
                continue
            try:
                rules.append(parse_rules(policy.rules))
            except RulesError as exc:  # validated on write; a stored bad one grants nothing
                log.warning("policy %s (%s): %s", policy.name, policy.id, exc)
        return Authorizer(rules, key=token.accessor_id)
