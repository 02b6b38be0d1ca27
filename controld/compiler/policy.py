"""The inbound side of a snapshot: identity, mTLS mode, access policy and rate limits.

Access policies of the destination apply in name order, their rules in order, as one list
(the first matching rule decides). Sources naming a service become that service's SPIFFE ID
in namespace ``default``. The default action (what happens to calls no rule matches):

* the service's effective mTLS mode (its ServiceDefaults', else the Mesh's) is ``strict``:
  ``deny`` as soon as the service has any AccessPolicy (default deny, even with only
  ``deny``/``audit`` rules);
* otherwise ``deny`` as soon as one rule allows (an allow-list), else ``allow`` (only
  deny/audit rules: everything else passes).

A service with no access policy gets no inbound policy at all (everything is allowed).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Literal

from controld.compiler.inputs import Inputs, spiffe_id
from meshcore.model.policy import AccessRule, MtlsMode
from meshcore.model.snapshot import InboundPolicy, RateLimitRule

__all__ = ["InboundParts", "build_inbound", "effective_mtls", "inbound_key", "inbound_policy"]


@dataclass(frozen=True, slots=True)
class InboundParts:
    """What a service's own snapshot carries about calls into it."""

    mtls: MtlsMode
    policy: InboundPolicy | None
    #: For each rule of ``policy``: the name of the AccessPolicy it came from.
    rule_origins: tuple[str, ...]
    rate_limits: tuple[RateLimitRule, ...]


def inbound_key(inputs: Inputs, service: str) -> Hashable:
    """Everything :func:`build_inbound` reads for ``service``."""
    resources = inputs.resources
    return (
        service,
        inputs.mesh.mtls,
        inputs.mesh.trust_domain,
        inputs.defaults(service),
        resources.access_policies_for(service),
        resources.rate_limits_for(service),
    )


def effective_mtls(inputs: Inputs, service: str) -> MtlsMode:
    """The mTLS mode of ``service``'s inbound side: its ServiceDefaults', else the Mesh's."""
    defaults = inputs.defaults(service)
    if defaults is not None and defaults.mtls is not None:
        return defaults.mtls
    return inputs.mesh.mtls


def inbound_policy(inputs: Inputs, service: str) -> tuple[InboundPolicy | None, tuple[str, ...]]:
    """The compiled access policy of ``service`` and each rule's AccessPolicy name."""
    policies = inputs.resources.access_policies_for(service)
    if not policies:
        return None, ()
    trust_domain = inputs.mesh.trust_domain
    rules: list[AccessRule] = []
    origins: list[str] = []
    for policy in policies:
        for rule in policy.spec.rules:
            sources = tuple(spiffe_id(s, trust_domain) for s in rule.sources)
            rules.append(
                rule if sources == rule.sources else rule.model_copy(update={"sources": sources})
            )
            origins.append(policy.metadata.name)
    # STRICT: every caller is authenticated, so any policy is an allow-list (default deny).
    strict = effective_mtls(inputs, service) == "strict"
    default: Literal["allow", "deny"] = (
        "deny" if strict or any(r.action == "allow" for r in rules) else "allow"
    )
    return InboundPolicy(rules=tuple(rules), default_action=default), tuple(origins)


def build_inbound(inputs: Inputs, service: str) -> InboundParts:
    """Inbound settings of ``service``'s sidecars."""
    policy, origins = inbound_policy(inputs, service)
    limits = tuple(
        RateLimitRule(
            name=r.metadata.name,
            requests_per_second=r.spec.requests_per_second,
            burst=r.spec.burst,
            match=r.spec.match,
            per_source=r.spec.per_source,
        )
        for r in inputs.resources.rate_limits_for(service)
    )
    return InboundParts(
        mtls=effective_mtls(inputs, service),
        policy=policy,
        rule_origins=origins,
        rate_limits=limits,
    )
