"""Consul's JSON shapes for the registry's entities (CamelCase keys, as Consul returns them)."""

from __future__ import annotations

import base64
from typing import Any

from controld.registry.durations import format_duration
from controld.registry.model import Check, KVEntry, Node, Service, Session

__all__ = [
    "agent_service_json",
    "catalog_service_json",
    "check_json",
    "kv_json",
    "node_json",
    "service_json",
    "session_json",
]

Json = dict[str, Any]

_EMPTY_PROXY: Json = {"Mode": "", "MeshGateway": {}, "Expose": {}}


def node_json(node: Node, dc: str) -> Json:
    """``structs.Node`` as in /v1/catalog/nodes and the health entries."""
    return {
        "ID": node.id,
        "Node": node.name,
        "Address": node.address,
        "Datacenter": dc,
        "TaggedAddresses": dict(node.tagged_addresses),
        "Meta": dict(node.meta),
        "CreateIndex": node.create_index,
        "ModifyIndex": node.modify_index,
    }


def _proxy(svc: Service) -> Json:
    if svc.proxy:
        out = dict(_EMPTY_PROXY)
        out.update(svc.proxy)
        return out
    return dict(_EMPTY_PROXY)


def service_json(svc: Service) -> Json:
    """``structs.NodeService`` (health entries, /v1/catalog/node/:node)."""
    out: Json = {"ID": svc.id, "Service": svc.name, "Tags": list(svc.tags)}
    if svc.kind:
        out = {"Kind": svc.kind, **out}
    out["Address"] = svc.address
    if svc.tagged_addresses:
        out["TaggedAddresses"] = svc.tagged_addresses
    out["Meta"] = dict(svc.meta)
    out["Port"] = svc.port
    if svc.socket_path:
        out["SocketPath"] = svc.socket_path
    out["Weights"] = dict(svc.weights)
    out["EnableTagOverride"] = svc.enable_tag_override
    out["Proxy"] = _proxy(svc)
    out["Connect"] = dict(svc.connect or {})
    if svc.locality:
        out["Locality"] = svc.locality
    out["PeerName"] = ""
    out["CreateIndex"] = svc.create_index
    out["ModifyIndex"] = svc.modify_index
    return out


def catalog_service_json(svc: Service, node: Node | None, dc: str) -> Json:
    """``structs.ServiceNode`` (/v1/catalog/service/:name)."""
    out: Json = {
        "ID": node.id if node else "",
        "Node": svc.node,
        "Address": node.address if node else "",
        "Datacenter": dc,
        "TaggedAddresses": dict(node.tagged_addresses) if node else {},
        "NodeMeta": dict(node.meta) if node else {},
        "ServiceKind": svc.kind,
        "ServiceID": svc.id,
        "ServiceName": svc.name,
        "ServiceTags": list(svc.tags),
        "ServiceAddress": svc.address,
        "ServiceWeights": dict(svc.weights),
        "ServiceMeta": dict(svc.meta),
        "ServicePort": svc.port,
        "ServiceEnableTagOverride": svc.enable_tag_override,
        "ServiceProxy": _proxy(svc),
        "ServiceConnect": dict(svc.connect or {}),
        "CreateIndex": svc.create_index,
        "ModifyIndex": svc.modify_index,
    }
    if svc.tagged_addresses:
        out["ServiceTaggedAddresses"] = svc.tagged_addresses
    if svc.socket_path:
        out["ServiceSocketPath"] = svc.socket_path
    if svc.locality:
        out["ServiceLocality"] = svc.locality
    return out


def agent_service_json(svc: Service, dc: str) -> Json:
    """``api.AgentService`` (/v1/agent/services): no indexes, optional fields omitted."""
    out: Json = {}
    if svc.kind:
        out["Kind"] = svc.kind
    out.update(
        {
            "ID": svc.id,
            "Service": svc.name,
            "Tags": list(svc.tags),
            "Meta": dict(svc.meta),
            "Port": svc.port,
            "Address": svc.address,
        }
    )
    if svc.socket_path:
        out["SocketPath"] = svc.socket_path
    if svc.tagged_addresses:
        out["TaggedAddresses"] = svc.tagged_addresses
    out["Weights"] = dict(svc.weights)
    out["EnableTagOverride"] = svc.enable_tag_override
    if svc.kind and svc.proxy is not None:
        out["Proxy"] = _proxy(svc)
    if svc.connect:
        out["Connect"] = dict(svc.connect)
    if svc.locality:
        out["Locality"] = svc.locality
    out["Datacenter"] = dc
    return out


def check_json(check: Check) -> Json:
    """``structs.HealthCheck``."""
    return {
        "Node": check.node,
        "CheckID": check.check_id,
        "Name": check.name,
        "Status": check.status,
        "Notes": check.notes,
        "Output": check.output,
        "ServiceID": check.service_id,
        "ServiceName": check.service_name,
        "ServiceTags": list(check.service_tags),
        "Type": check.type,
        "Interval": check.interval,
        "Timeout": check.timeout,
        "ExposedPort": 0,
        "Definition": dict(check.definition),
        "CreateIndex": check.create_index,
        "ModifyIndex": check.modify_index,
    }


def kv_json(entry: KVEntry) -> Json:
    """``structs.DirEntry``: the value base64-encoded, null when empty."""
    out: Json = {
        "LockIndex": entry.lock_index,
        "Key": entry.key,
        "Flags": entry.flags,
        "Value": base64.b64encode(entry.value).decode("ascii") if entry.value else None,
        "CreateIndex": entry.create_index,
        "ModifyIndex": entry.modify_index,
    }
    if entry.session:
        out["Session"] = entry.session
    return out


def session_json(session: Session) -> Json:
    """``structs.Session``; LockDelay in nanoseconds as Go's ``time.Duration``."""
    return {
        "ID": session.id,
        "Name": session.name,
        "Node": session.node,
        "LockDelay": round(session.lock_delay * 1e9),
        "Behavior": session.behavior,
        "TTL": format_duration(session.ttl) if session.ttl else "",
        "NodeChecks": list(session.node_checks),
        "ServiceChecks": [{"ID": c, "Namespace": ""} for c in session.service_checks] or None,
        "CreateIndex": session.create_index,
        "ModifyIndex": session.modify_index,
    }
