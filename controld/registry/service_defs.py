"""Agent service definitions: parsing, validation and derived sidecar services."""

from __future__ import annotations

from typing import Any

from controld.registry import defs
from controld.registry.errors import BadRequest, RequestError
from controld.registry.model import Service
from controld.registry.state import State

__all__ = ["parse_service", "service_addresses", "sidecar_service"]

Json = dict[str, Any]

SIDECAR_PORT_RANGE = (21000, 21255)


def parse_service(body: Json, node: str) -> tuple[Service, list[Json], Json | None]:
    """An agent service definition: the service, its check bodies, its ``SidecarService``."""
    name = defs.as_str(body, "Name") or defs.as_str(body, "Service")
    if not name:
        raise BadRequest("Missing service name")
    meta = defs.as_str_map(body, "Meta")
    defs.validate_meta(meta)
    kind = defs.as_str(body, "Kind")
    proxy = body.get("Proxy")
    if proxy is not None and not isinstance(proxy, dict):
        raise BadRequest("Request decode failed: Proxy must be an object")
    connect = body.get("Connect")
    if connect is not None and not isinstance(connect, dict):
        raise BadRequest("Request decode failed: Connect must be an object")
    port = defs.as_int(body, "Port")
    if kind == "connect-proxy":
        if not proxy or not proxy.get("DestinationServiceName"):
            raise BadRequest(
                "Invalid Service: Proxy.DestinationServiceName must be non-empty "
                "for Connect proxy services"
            )
        if not port and not defs.as_str(body, "SocketPath") and proxy.get("Mode") != "transparent":
            raise BadRequest("Invalid Service: Port or SocketPath must be set for a Connect proxy")
    sidecar = None
    if connect:
        sidecar = connect.get("SidecarService")
        if sidecar is not None and not isinstance(sidecar, dict):
            raise BadRequest("Request decode failed: Connect.SidecarService must be an object")
        connect = {k: v for k, v in connect.items() if k != "SidecarService"}
    svc = Service(
        node=node,
        id=defs.as_str(body, "ID") or name,
        name=name,
        tags=defs.as_tags(body),
        address=defs.as_str(body, "Address"),
        port=port,
        meta=meta,
        tagged_addresses=service_addresses(body.get("TaggedAddresses")),
        weights=defs.weights(body),
        enable_tag_override=defs.as_bool(body, "EnableTagOverride"),
        kind=kind,
        proxy=proxy,
        connect=connect or None,
        socket_path=defs.as_str(body, "SocketPath"),
        locality=body.get("Locality") or None,
        local=True,
    )
    checks: list[Json] = []
    for key in ("Check", "Checks"):
        item = body.get(key)
        items = item if isinstance(item, list) else [item] if item else []
        for c in items:
            if not isinstance(c, dict):
                raise BadRequest(f"Request decode failed: {key} must hold objects")
            defs.check_spec(c)  # validate before anything is written
            checks.append(c)
    return svc, checks, sidecar


def sidecar_service(state: State, parent: Service, body: Json) -> tuple[Service, list[Json]]:
    """The ``<name>-sidecar-proxy`` service Consul derives from ``Connect.SidecarService``."""
    port = defs.as_int(body, "Port")
    if not port:
        used = {s.port for s in state.services.get(parent.node, {}).values() if s.sidecar_of}
        lo, hi = SIDECAR_PORT_RANGE
        port = next((p for p in range(lo, hi + 1) if p not in used), 0)
        if not port:
            raise RequestError("No free sidecar port in the range 21000-21255")
    side_id = defs.as_str(body, "ID") or f"{parent.id}-sidecar-proxy"
    proxy = dict(body.get("Proxy") or {})
    proxy.setdefault("DestinationServiceName", parent.name)
    proxy.setdefault("DestinationServiceID", parent.id)
    proxy.setdefault("LocalServiceAddress", "127.0.0.1")
    proxy.setdefault("LocalServicePort", parent.port)
    meta = defs.as_str_map(body, "Meta") if "Meta" in body else dict(parent.meta)
    side = Service(
        node=parent.node,
        id=side_id,
        name=defs.as_str(body, "Name") or f"{parent.name}-sidecar-proxy",
        tags=defs.as_tags(body) if "Tags" in body else parent.tags,
        address=defs.as_str(body, "Address") or parent.address,
        port=port,
        meta=meta,
        weights=defs.weights(body),
        kind="connect-proxy",
        proxy=proxy,
        local=True,
        sidecar_of=parent.id,
    )
    checks: list[Json] = []
    for key in ("Check", "Checks"):
        item = body.get(key)
        checks.extend(item if isinstance(item, list) else [item] if item else [])
    if not checks:
        addr = side.address or "127.0.0.1"
        checks = [
            {"Name": "Connect Sidecar Listening", "TCP": f"{addr}:{port}", "Interval": "10s"},
            {"Name": f"Connect Sidecar Aliasing {parent.id}", "AliasService": parent.id},
        ]
    return side, checks


def service_addresses(value: object) -> Json:
    """Service ``TaggedAddresses``: tag -> ``{"Address": ..., "Port": ...}``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest("Request decode failed: TaggedAddresses must be an object")
    out: Json = {}
    for tag, item in value.items():
        if not isinstance(item, dict):
            raise BadRequest("Request decode failed: TaggedAddresses values must be objects")
        out[str(tag)] = {
            "Address": defs.as_str(item, "Address"),
            "Port": defs.as_int(item, "Port"),
        }
    return out
