"""The registry as the Consul agent of its own node: local services, checks, maintenance.

Consul's agent keeps local definitions and syncs them into the catalog; here the catalog *is*
the agent's state, so registering through the agent writes the catalog directly, in one
transaction, and marks the entries ``local`` (what /v1/agent/services and /checks list).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

from controld.registry import defs
from controld.registry.acl_authz import MANAGEMENT, Authorizer
from controld.registry.errors import BadRequest, Forbidden, NotFound, RequestError
from controld.registry.model import CRITICAL, PASSING, Check, Node, Service
from controld.registry.service_defs import parse_service, sidecar_service
from controld.registry.state import State
from controld.registry.timers import DeadlineQueue
from controld.registry.txn import Txn

__all__ = ["Agent", "AgentConfig"]

Json = dict[str, Any]

CONSUL_VERSION = "1.21.5"
SERF_CHECK = "serfHealth"
NODE_MAINT = "_node_maintenance"
SERVICE_MAINT_PREFIX = "_service_maintenance:"
MAX_OUTPUT = 4096


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Identity of the registry's own node."""

    node_name: str
    datacenter: str = "dc1"
    address: str = "127.0.0.1"
    port: int = 8500


def _truncate(output: str, limit: int = MAX_OUTPUT) -> str:
    if len(output) <= limit:
        return output
    return output[:limit] + f"\n...\nCaptured {limit} of {len(output)} bytes"


class Agent:
    """Agent-level operations on the state; every method is one write transaction."""

    def __init__(self, state: State, config: AgentConfig) -> None:
        self.state = state
        self.config = config
        self.node_id = state.meta.get("node_id") or str(uuid.uuid4())
        # TTL check deadlines, driven by the check runner's task.
        self.ttl_timers: DeadlineQueue[str] = DeadlineQueue()

    @property
    def node(self) -> str:
        """This agent's node name."""
        return self.config.node_name

    def bootstrap(self) -> None:
        """Register this node, its ``serfHealth`` check and the ``consul`` service."""
        cfg = self.config
        addr = cfg.address
        node = Node(
            name=cfg.node_name,
            id=self.node_id,
            address=addr,
            tagged_addresses={"lan": addr, "lan_ipv4": addr, "wan": addr, "wan_ipv4": addr},
            meta={"consul-network-segment": "", "consul-version": CONSUL_VERSION},
        )
        with self.state.write() as txn:
            if self.state.meta.get("node_id") != self.node_id:
                txn.batch.put_meta("node_id", self.node_id)
                self.state.meta["node_id"] = self.node_id
            txn.put_node(node)
            txn.put_check(
                Check(
                    node=cfg.node_name,
                    check_id=SERF_CHECK,
                    name="Serf Health Status",
                    status=PASSING,
                    output="Agent alive and reachable",
                )
            )
            txn.put_service(
                Service(node=cfg.node_name, id="consul", name="consul", port=8300, meta={})
            )

    # -- reads ---------------------------------------------------------------------------
    def local_services(self) -> list[Service]:
        """Services registered through this agent, by ID."""
        by_id = self.state.services.get(self.node, {})
        return sorted((s for s in by_id.values() if s.local), key=lambda s: s.id)

    def local_checks(self) -> list[Check]:
        """Checks registered through this agent, by ID."""
        by_id = self.state.checks.get(self.node, {})
        return sorted((c for c in by_id.values() if c.local), key=lambda c: c.check_id)

    def local_service(self, service_id: str) -> Service | None:
        """A local service by ID."""
        svc = self.state.services.get(self.node, {}).get(service_id)
        return svc if svc is not None and svc.local else None

    def local_check(self, check_id: str) -> Check | None:
        """A local check by ID."""
        check = self.state.checks.get(self.node, {}).get(check_id)
        return check if check is not None and check.local else None

    # -- services ------------------------------------------------------------------------
    def register_service(
        self,
        body: Json,
        *,
        replace_existing_checks: bool = False,
        authz: Authorizer = MANAGEMENT,
    ) -> None:
        """PUT /v1/agent/service/register; Forbidden without service:write on the service
        (and its sidecar, the service a proxy fronts, and any service it replaces)."""
        svc, check_bodies, sidecar = parse_service(body, self.node)
        self._vet(authz, svc)
        side = None
        if sidecar is not None:
            side = sidecar_service(self.state, svc, sidecar)
            self._vet(authz, side[0])
        with self.state.write() as txn:
            self._put_service(txn, svc, check_bodies, replace_existing_checks)
            if side is not None:
                self._put_service(txn, side[0], side[1], replace_existing_checks)

    def _vet(self, authz: Authorizer, svc: Service) -> None:
        names = [svc.name]
        old = self.state.services.get(self.node, {}).get(svc.id)
        if old is not None:
            names.append(old.name)
        if svc.kind == "connect-proxy" and isinstance(svc.proxy, dict):
            names.append(str(svc.proxy.get("DestinationServiceName", "")))
        if not all(authz.service_write(name) for name in names):
            raise Forbidden("Permission denied")

    def check_writable(self, authz: Authorizer, check: Check) -> bool:
        """service:write on a service check's service, node:write for a node check."""
        if check.service_id:
            return authz.service_write(check.service_name)
        return authz.node_write(check.node)

    def _put_service(
        self, txn: Txn, svc: Service, check_bodies: list[Json], replace_checks: bool
    ) -> None:
        st = self.state
        if svc.node not in st.nodes:
            raise RequestError(f"Node {svc.node!r} is not registered")
        txn.put_service(svc)
        wanted: set[str] = set()
        for i, body in enumerate(check_bodies):
            check_id = defs.as_str(body, "CheckID") or defs.as_str(body, "ID")
            if not check_id:
                check_id = f"service:{svc.id}"
                if len(check_bodies) > 1:
                    check_id += f":{i + 1}"
            name = defs.as_str(body, "Name") or f"Service '{svc.name}' check"
            self._put_check(txn, body, check_id, name, svc)
            wanted.add(check_id)
        existing = st.checks.get(self.node, {})
        # The service's checks follow its tags and name.
        for check in list(existing.values()):
            if check.service_id != svc.id:
                continue
            if replace_checks and check.check_id not in wanted:
                txn.delete_check(self.node, check.check_id)
            elif check.service_name != svc.name or check.service_tags != svc.tags:
                txn.put_check(replace(check, service_name=svc.name, service_tags=svc.tags))

    def deregister_service(self, service_id: str) -> None:
        """PUT /v1/agent/service/deregister/:id (its sidecars go with it)."""
        if self.local_service(service_id) is None:
            raise NotFound(_unknown("service", service_id))
        with self.state.write() as txn:
            self._deregister(txn, service_id)

    def _deregister(self, txn: Txn, service_id: str) -> None:
        for svc in list(self.state.services.get(self.node, {}).values()):
            if svc.sidecar_of == service_id:
                txn.delete_service(self.node, svc.id)
        txn.delete_service(self.node, service_id)

    def reap_service(self, service_id: str) -> None:
        """Deregister a service whose check stayed critical too long (no error if gone)."""
        if self.local_service(service_id) is not None:
            with self.state.write() as txn:
                self._deregister(txn, service_id)

    def service_maintenance(self, service_id: str, enable: bool, reason: str) -> None:
        """PUT /v1/agent/service/maintenance/:id."""
        svc = self.local_service(service_id)
        if svc is None:
            raise NotFound(f'Unknown service ID "{service_id}"')
        check_id = SERVICE_MAINT_PREFIX + service_id
        with self.state.write() as txn:
            if not enable:
                txn.delete_check(self.node, check_id)
                return
            notes = reason or (
                "Maintenance mode is enabled for this service, "
                "but no reason was provided. This is a default message."
            )
            txn.put_check(
                Check(
                    node=self.node,
                    check_id=check_id,
                    name="Service Maintenance Mode",
                    status=CRITICAL,
                    notes=notes,
                    service_id=svc.id,
                    service_name=svc.name,
                    service_tags=svc.tags,
                    type="maintenance",
                    local=True,
                )
            )

    def node_maintenance(self, enable: bool, reason: str) -> None:
        """PUT /v1/agent/maintenance."""
        with self.state.write() as txn:
            if not enable:
                txn.delete_check(self.node, NODE_MAINT)
                return
            notes = reason or (
                "Maintenance mode is enabled for this node, "
                "but no reason was provided. This is a default message."
            )
            txn.put_check(
                Check(
                    node=self.node,
                    check_id=NODE_MAINT,
                    name="Node Maintenance Mode",
                    status=CRITICAL,
                    notes=notes,
                    type="maintenance",
                    local=True,
                )
            )

    # -- checks --------------------------------------------------------------------------
    def register_check(self, body: Json) -> None:
        """PUT /v1/agent/check/register."""
        name = defs.as_str(body, "Name")
        if not name:
            raise BadRequest("Missing check name")
        defs.check_spec(body)
        check_id = defs.as_str(body, "CheckID") or defs.as_str(body, "ID") or name
        service_id = defs.as_str(body, "ServiceID")
        svc = None
        if service_id:
            svc = self.state.services.get(self.node, {}).get(service_id)
            if svc is None:
                raise NotFound(f'ServiceID "{service_id}" does not exist')
        with self.state.write() as txn:
            self._put_check(txn, body, check_id, name, svc)

    def _put_check(
        self, txn: Txn, body: Json, check_id: str, name: str, svc: Service | None
    ) -> None:
        spec, kind, definition = defs.check_spec(body)
        old = self.state.checks.get(self.node, {}).get(check_id)
        status = defs.as_str(body, "Status")
        output = ""
        if not status:
            # Re-registering keeps the current state; a new check starts critical.
            status = old.status if old is not None else CRITICAL
            output = old.output if old is not None else ""
        check = Check(
            node=self.node,
            check_id=check_id,
            name=name,
            status=status,
            notes=defs.as_str(body, "Notes"),
            output=output,
            service_id=svc.id if svc else "",
            service_name=svc.name if svc else "",
            service_tags=svc.tags if svc else (),
            type=kind,
            interval=definition.get("Interval", ""),
            timeout=definition.get("Timeout", ""),
            definition=definition,
            spec=spec,
            local=True,
        )
        txn.put_check(check)
        if spec.kind == "ttl":
            self.ttl_timers.set_in(check_id, spec.ttl)

    def deregister_check(self, check_id: str) -> None:
        """PUT /v1/agent/check/deregister/:id."""
        if self.local_check(check_id) is None:
            raise NotFound(_unknown("check", check_id))
        with self.state.write() as txn:
            txn.delete_check(self.node, check_id)
        self.ttl_timers.discard(check_id)

    def update_ttl(self, check_id: str, status: str, output: str) -> None:
        """PUT /v1/agent/check/{pass,warn,fail,update}/:id: set status, reset the TTL."""
        check = self.local_check(check_id)
        if check is None:
            raise NotFound(_unknown("check", check_id))
        if check.spec is None or check.spec.kind != "ttl":
            raise RequestError(f'CheckID "{check_id}" does not have associated TTL')
        self.ttl_timers.set_in(check_id, check.spec.ttl)
        self.set_status(check_id, status, _truncate(output, check.spec.output_max_size))

    def set_status(self, check_id: str, status: str, output: str) -> None:
        """Record a check result (a write only when status or output changed)."""
        check = self.state.checks.get(self.node, {}).get(check_id)
        if check is None or (check.status == status and check.output == output):
            return
        with self.state.write() as txn:
            txn.put_check(replace(check, status=status, output=output))


def _unknown(what: str, ident: str) -> str:
    return f'Unknown {what} ID "{ident}". Ensure that the {what} ID is passed, not the {what} name.'
