"""The TLS decision per endpoint: a plain registration never downgrades a sidecar endpoint.

A service's endpoints may be mixed: sidecar inbound listeners and plain instances registered
without a sidecar. Each endpoint is decided on its own, by the mTLS mode of the service it
belongs to (its ServiceDefaults', else the Mesh's; for a failover tier, the tier's service):

* ``disabled``: plaintext (that service's sidecars don't terminate TLS);
* a sidecar endpoint: mTLS, checking the peer's SPIFFE ID is the service's;
* a plain endpoint under ``permissive``: plaintext;
* a plain endpoint under ``strict``: excluded from the cluster (never sent plaintext), with
  the reason shown by ``explain`` and ``status``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from controld.compiler.inputs import ClusterRef, Inputs
from controld.compiler.policy import effective_mtls
from controld.discovery.view import ServiceEndpoint
from meshcore.api.explain import EndpointMix, ExcludedEndpoint

__all__ = ["EndpointDecision", "TlsChoice", "decide", "endpoint_mix", "mix_of"]

#: How an endpoint is reached.
TlsChoice = Literal["mtls", "plaintext", "excluded"]

#: Why a plain endpoint under STRICT is left out.
EXCLUDED_STRICT = "plain endpoint (no sidecar) under STRICT mTLS: never sent plaintext"


@dataclass(frozen=True, slots=True)
class EndpointDecision:
    """One endpoint of a cluster tier and how it is reached."""

    endpoint: ServiceEndpoint
    #: The service the endpoint belongs to (a failover tier's may differ from the cluster's).
    service: str
    priority: int
    choice: TlsChoice
    reason: str


def decide(inputs: Inputs, service: str, endpoint: ServiceEndpoint) -> tuple[TlsChoice, str]:
    """How ``endpoint`` of ``service`` is reached, and why."""
    mode = effective_mtls(inputs, service)
    if mode == "disabled":
        return "plaintext", f"mTLS is disabled for {service}"
    if endpoint.sidecar:
        return "mtls", "sidecar: mTLS with its SPIFFE ID checked"
    if mode == "permissive":
        return "plaintext", "plain endpoint (no sidecar) under PERMISSIVE: plaintext"
    return "excluded", EXCLUDED_STRICT


def decisions(
    inputs: Inputs, tiers: Iterable[tuple[ClusterRef, int, tuple[ServiceEndpoint, ...]]]
) -> list[EndpointDecision]:
    """The decision for every endpoint of ``tiers`` (``(ref, priority, endpoints)``)."""
    found = []
    for ref, priority, endpoints in tiers:
        for endpoint in endpoints:
            choice, reason = decide(inputs, ref[0], endpoint)
            found.append(EndpointDecision(endpoint, ref[0], priority, choice, reason))
    return found


def mix_of(found: Iterable[EndpointDecision]) -> EndpointMix:
    """Counts of sidecar and plain endpoints, how many of each choice, and the excluded ones
    with their reason (the form ``explain`` and ``status`` show)."""
    items = list(found)
    return EndpointMix(
        sidecar=sum(1 for d in items if d.endpoint.sidecar),
        plain=sum(1 for d in items if not d.endpoint.sidecar),
        mtls=sum(1 for d in items if d.choice == "mtls"),
        plaintext=sum(1 for d in items if d.choice == "plaintext"),
        excluded=tuple(
            ExcludedEndpoint(
                host=d.endpoint.host, port=d.endpoint.port, service=d.service, reason=d.reason
            )
            for d in items
            if d.choice == "excluded"
        ),
    )


def endpoint_mix(inputs: Inputs, services: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per service of ``services`` that has plain endpoints: its mode and :func:`mix_of` of
    its healthy endpoints (services whose endpoints are all sidecars are left out)."""
    mixes: dict[str, dict[str, Any]] = {}
    for service in sorted(services):
        endpoints = inputs.endpoints(service)
        if all(e.sidecar for e in endpoints):
            continue
        found = decisions(inputs, [((service, None), 0, endpoints)])
        mix = mix_of(found).model_dump(mode="json")
        mixes[service] = {"mtls_mode": effective_mtls(inputs, service), **mix}
    return mixes
