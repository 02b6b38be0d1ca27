"""What a sidecar registers: its app's service instance and itself as the sidecar proxy (pure).

:func:`plan_registrations` turns a bootstrap (and the inbound listener's bound address) into
the two :class:`ServiceRegistration` values meshd keeps in the registry:

* ``<service>`` (instance ``<service>-<node>``, or ``<service>-<host>-<app port>`` when the
  bootstrap names no node) at the app's port, TTL check ``service:<id>``, and meta
  :data:`SIDECAR_META_KEY` naming its sidecar (reach it through the sidecar only);
* ``<service>-sidecar-proxy`` (``Kind: connect-proxy``) at the inbound listener's port, with a
  ``Proxy`` block naming the instance and the app's local address, TTL check
  ``service:<id>-sidecar-proxy``.

With ``zone`` in the bootstrap both carry service meta ``zone`` (:data:`ZONE_META_KEY`).

The advertised address is ``advertise_address``, else the inbound listener's host unless it is
a wildcard, else empty (the registry then uses the node's address).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshcore.model import Bootstrap, SocketAddr
from meshcore.model.bootstrap import AppCheck, RegistryConfig
from meshcore.registry.model import (
    CONNECT_PROXY,
    SIDECAR_META_KEY,
    ProxySpec,
    ServiceRegistration,
    TtlCheck,
)

__all__ = ["ZONE_META_KEY", "PlanInputs", "RegistrationPlan", "plan_registrations"]

#: Service meta key naming the instance's zone (``Bootstrap.zone``), read for locality.
ZONE_META_KEY = "zone"

_UNSPECIFIED = frozenset(("", "0.0.0.0", "::"))


@dataclass(frozen=True)
class PlanInputs:
    """What the plan depends on: the bootstrap in force and the inbound listener's address."""

    bootstrap: Bootstrap
    #: Bound address of the inbound listener (``None``: no inbound listener, no proxy entry).
    inbound: SocketAddr | None


@dataclass(frozen=True)
class RegistrationPlan:
    """The registrations one sidecar keeps in the registry, and how to probe its app."""

    service: ServiceRegistration
    proxy: ServiceRegistration | None
    app: SocketAddr
    check: AppCheck

    @property
    def registrations(self) -> tuple[ServiceRegistration, ...]:
        """Service first, then its proxy (the order to register in)."""
        return (self.service,) if self.proxy is None else (self.service, self.proxy)

    @property
    def service_ids(self) -> frozenset[str]:
        """IDs of the instances this plan registers."""
        return frozenset(r.service_id for r in self.registrations)


def plan_registrations(
    inputs: PlanInputs, config: RegistryConfig, *, hostname: str
) -> RegistrationPlan:
    """The service and sidecar-proxy registrations for a bootstrap (see the module doc)."""
    boot = inputs.bootstrap
    inbound = inputs.inbound
    service_id = config.service_id or (
        f"{boot.service}-{boot.node}" if boot.node else f"{boot.service}-{hostname}-{boot.app.port}"
    )
    if config.advertise_address:
        address = config.advertise_address
    elif inbound is not None and inbound.host not in _UNSPECIFIED:
        address = inbound.host
    else:
        address = ""  # the registry falls back to the node's address
    check = config.check
    ttl = check.ttl
    proxy_id = f"{service_id}-sidecar-proxy"
    zone_meta = {ZONE_META_KEY: boot.zone} if boot.zone else {}
    # The bootstrap's zone wins over a ``zone`` in ``registry.meta``: locality must follow
    # what this sidecar itself prefers.
    meta = {**config.meta, **zone_meta}
    if inbound is not None:
        meta[SIDECAR_META_KEY] = proxy_id
    service = ServiceRegistration(
        name=boot.service,
        service_id=service_id,
        address=address,
        port=boot.app.port,
        tags=config.tags,
        meta=meta,
        checks=(
            TtlCheck(
                check_id=f"service:{service_id}",
                name=f"{boot.service} app ({check.kind} probe by meshd)",
                ttl_s=ttl,
                deregister_critical_after_s=check.deregister_critical_after_s,
            ),
        ),
    )
    proxy = None
    if inbound is not None:
        proxy = ServiceRegistration(
            name=f"{boot.service}-sidecar-proxy",
            service_id=proxy_id,
            address=address,
            port=inbound.port,
            kind=CONNECT_PROXY,
            meta=zone_meta,
            proxy=ProxySpec(
                destination_service_name=boot.service,
                destination_service_id=service_id,
                local_service_address=boot.app.host,
                local_service_port=boot.app.port,
            ),
            checks=(
                TtlCheck(
                    check_id=f"service:{proxy_id}",
                    name="meshd sidecar alive",
                    ttl_s=ttl,
                    deregister_critical_after_s=check.deregister_critical_after_s,
                ),
            ),
        )
    return RegistrationPlan(service=service, proxy=proxy, app=boot.app, check=check)
