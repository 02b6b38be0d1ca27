"""Catalog writes: /v1/catalog/register and /v1/catalog/deregister."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from controld.registry import defs
from controld.registry.acl_authz import MANAGEMENT, Authorizer
from controld.registry.errors import Forbidden, RequestError
from controld.registry.model import Check, Node, Service
from controld.registry.service_defs import service_addresses
from controld.registry.state import State

__all__ = ["catalog_deregister", "catalog_register"]

Json = dict[str, Any]


def _check(state: State, node: str, body: Json, services: dict[str, Service]) -> Check:
    name = defs.as_str(body, "Name")
    check_id = defs.as_str(body, "CheckID") or name
    if not check_id:
        raise RequestError("Missing check ID")
    service_id = defs.as_str(body, "ServiceID")
    svc = None
    if service_id:
        svc = services.get(service_id) or state.services.get(node, {}).get(service_id)
        if svc is None:
            raise RequestError("Missing service registration")
    status = defs.as_str(body, "Status") or "critical"
    if status not in ("passing", "warning", "critical"):
        raise RequestError(f"Invalid check status: {status!r}")
    definition = body.get("Definition") or {}
    if not isinstance(definition, dict):
        raise RequestError("Request decode failed: Definition must be an object")
    return Check(
        node=node,
        check_id=check_id,
        name=name,
        status=status,
        notes=defs.as_str(body, "Notes"),
        output=defs.as_str(body, "Output"),
        service_id=service_id,
        service_name=svc.name if svc else "",
        service_tags=svc.tags if svc else (),
        type=defs.as_str(body, "Type"),
        interval=defs.as_str(body, "Interval") if isinstance(body.get("Interval"), str) else "",
        timeout=defs.as_str(body, "Timeout") if isinstance(body.get("Timeout"), str) else "",
        definition=definition,
    )


def _node_name(body: Json, datacenter: str) -> str:
    """The write's node, once its datacenter (if given) is known to be this one."""
    dc = defs.as_str(body, "Datacenter")
    if dc and dc.lower() != datacenter.lower():
        raise RequestError("No path to datacenter")
    name = defs.as_str(body, "Node")
    if not name:
        raise RequestError("Must provide node")
    return name


def _deny() -> Forbidden:
    return Forbidden("Permission denied")


def _vet_register(  # noqa: PLR0917 (one call site, all positional context)
    state: State,
    authz: Authorizer,
    node: Node,
    write_node: bool,
    services: dict[str, Service],
    checks: list[Check],
) -> None:
    """Consul's ``vetRegisterWithACL``: re-posting an unchanged node needs no node:write; a
    service needs service:write on its name (and on the service it replaces and, for a
    proxy, on its destination); a check needs write on its service, or on the node."""
    existing = state.nodes.get(node.name)
    same = existing is not None and (
        (existing.id, existing.address, existing.tagged_addresses, existing.meta)
        == (node.id, node.address, node.tagged_addresses, node.meta)
    )
    if write_node and not same and not authz.node_write(node.name):
        raise _deny()
    for svc in services.values():
        names = [svc.name]
        old = state.services.get(node.name, {}).get(svc.id)
        if old is not None:
            names.append(old.name)
        if svc.kind == "connect-proxy" and isinstance(svc.proxy, dict):
            names.append(str(svc.proxy.get("DestinationServiceName", "")))
        if not all(authz.service_write(n) for n in names):
            raise _deny()
    for check in checks:
        allowed = (
            authz.service_write(check.service_name)
            if check.service_id
            else authz.node_write(node.name)
        )
        old_check = state.checks.get(node.name, {}).get(check.check_id)
        if old_check is not None and old_check.service_id:
            allowed = allowed and authz.service_write(old_check.service_name)
        if not allowed:
            raise _deny()


def catalog_register(
    state: State, body: Json, datacenter: str, authz: Authorizer = MANAGEMENT
) -> None:
    """Register a node and optionally a service and checks, in one transaction."""
    name = _node_name(body, datacenter)
    skip = defs.as_bool(body, "SkipNodeUpdate")
    address = defs.as_str(body, "Address")
    existing = state.nodes.get(name)
    if not address and not (skip and existing is not None):
        raise RequestError("Must provide address if SkipNodeUpdate is not set")
    node_id = defs.as_str(body, "ID")
    if node_id:
        try:
            uuid.UUID(node_id)
        except ValueError as exc:
            raise RequestError(f"Bad node ID: {exc}") from exc
    meta = defs.as_str_map(body, "NodeMeta")
    defs.validate_meta(meta, "Node")
    node = Node(
        name=name,
        id=node_id or (existing.id if existing else ""),
        address=address,
        tagged_addresses=defs.as_str_map(body, "TaggedAddresses"),
        meta=meta,
    )
    services: dict[str, Service] = {}
    svc_body = body.get("Service")
    if svc_body is not None:
        if not isinstance(svc_body, dict):
            raise RequestError("Request decode failed: Service must be an object")
        svc_name = defs.as_str(svc_body, "Service") or defs.as_str(svc_body, "Name")
        if not svc_name:
            raise RequestError("Must provide service name (Service.Service)")
        svc_meta = defs.as_str_map(svc_body, "Meta")
        defs.validate_meta(svc_meta)
        old = state.services.get(name, {}).get(defs.as_str(svc_body, "ID") or svc_name)
        svc = Service(
            node=name,
            id=defs.as_str(svc_body, "ID") or svc_name,
            name=svc_name,
            tags=defs.as_tags(svc_body),
            address=defs.as_str(svc_body, "Address"),
            port=defs.as_int(svc_body, "Port"),
            meta=svc_meta,
            tagged_addresses=service_addresses(svc_body.get("TaggedAddresses")),
            weights=defs.weights(svc_body),
            enable_tag_override=defs.as_bool(svc_body, "EnableTagOverride"),
            kind=defs.as_str(svc_body, "Kind"),
            proxy=svc_body.get("Proxy") or None,
            connect=svc_body.get("Connect") or None,
            socket_path=defs.as_str(svc_body, "SocketPath"),
            locality=svc_body.get("Locality") or None,
            local=old.local if old else False,
            sidecar_of=old.sidecar_of if old else "",
        )
        services[svc.id] = svc
    check_bodies: list[Json] = []
    if isinstance(body.get("Check"), dict):
        check_bodies.append(body["Check"])
    if isinstance(body.get("Checks"), list):
        check_bodies.extend(c for c in body["Checks"] if isinstance(c, dict))
    checks = [_check(state, name, c, services) for c in check_bodies]
    _vet_register(state, authz, node, not (skip and existing is not None), services, checks)
    with state.write() as txn:
        if not (skip and existing is not None):
            txn.put_node(node)
        for svc in services.values():
            txn.put_service(svc)
        for check in checks:
            old_check = state.checks.get(name, {}).get(check.check_id)
            if old_check is not None and old_check.local:
                # The agent keeps running a check it owns; the catalog write updates its state.
                txn.put_check(replace(check, spec=old_check.spec, local=True))
            else:
                txn.put_check(check)


def catalog_deregister(
    state: State, body: Json, datacenter: str, authz: Authorizer = MANAGEMENT
) -> None:
    """Remove a node, one of its services or one of its checks."""
    name = _node_name(body, datacenter)
    service_id = defs.as_str(body, "ServiceID")
    check_id = defs.as_str(body, "CheckID")
    _vet_deregister(state, authz, name, service_id, check_id)
    with state.write() as txn:
        if service_id:
            txn.delete_service(name, service_id)
        if check_id:
            txn.delete_check(name, check_id)
        if not service_id and not check_id:
            txn.delete_node(name)


def _vet_deregister(
    state: State, authz: Authorizer, node: str, service_id: str, check_id: str
) -> None:
    """Consul's ``vetDeregisterWithACL``: node:write for the node, else write on the
    service being removed (or the check's service; node:write for a node check)."""
    if authz.node_write(node):
        return
    if not service_id and not check_id:
        raise _deny()
    svc = state.services.get(node, {}).get(service_id) if service_id else None
    if svc is not None and not authz.service_write(svc.name):
        raise _deny()
    check = state.checks.get(node, {}).get(check_id) if check_id else None
    if check is not None and (not check.service_id or not authz.service_write(check.service_name)):
        raise _deny()
