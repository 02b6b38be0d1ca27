"""Values exchanged with a Consul-compatible registry, and their (pure) JSON conversions.

Outgoing: :class:`ServiceRegistration` (with :class:`TtlCheck` and :class:`ProxySpec`) turns
into the body of ``PUT /v1/agent/service/register``. Incoming: :func:`parse_health_entries`
turns the body of ``GET /v1/health/service/<name>`` into :class:`HealthEntry` values,
:func:`parse_catalog_services` the body of ``GET /v1/catalog/services`` and
:func:`parse_kv_entries` the (py-consul decoded) entries of ``GET /v1/kv/<key>``.

Status vocabulary and aggregation follow Consul: ``passing``, ``warning``, ``critical``, and
``maintenance`` for the aggregate of an entry whose node or service is in maintenance mode
(maintenance > critical > warning > passing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

from meshcore.registry.errors import RegistryProtocolError

__all__ = [
    "CONNECT_PROXY",
    "SIDECAR_META_KEY",
    "CheckState",
    "CheckStatus",
    "HealthEntry",
    "KvEntry",
    "ProxySpec",
    "ServiceInstance",
    "ServiceRegistration",
    "Status",
    "TtlCheck",
    "aggregate_status",
    "go_duration",
    "parse_catalog_services",
    "parse_health_entries",
    "parse_index",
    "parse_kv_entries",
]

Status = Literal["passing", "warning", "critical", "maintenance"]
#: What a TTL check can be set to.
CheckStatus = Literal["passing", "warning", "critical"]

#: ``Kind`` of a sidecar proxy registration.
CONNECT_PROXY = "connect-proxy"
#: Meta key meshd puts on the service instances it fronts (value: the sidecar's service ID).
#: It says "reach me through my sidecar only", also before the sidecar's own registration
#: has been seen: a watcher must never route around the mesh in that window.
SIDECAR_META_KEY = "meshd-sidecar-proxy"

# Check IDs Consul gives the synthetic checks of maintenance mode.
_NODE_MAINT = "_node_maintenance"
_SERVICE_MAINT_PREFIX = "_service_maintenance:"
_RANK: dict[str, int] = {"passing": 0, "warning": 1, "critical": 2, "maintenance": 3}
_EMPTY: Mapping[str, str] = MappingProxyType({})


def go_duration(seconds: float) -> str:
    """A Go duration string for ``seconds`` (``15`` -> ``"15s"``, ``0.25`` -> ``"250ms"``)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {seconds!r}")
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


# ----------------------------------------------------------------------------------------------
# Outgoing: registrations
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TtlCheck:
    """A TTL check the registrant keeps alive with pass/warn/fail updates."""

    check_id: str
    name: str
    ttl_s: float
    notes: str = ""
    #: Let the registry drop the service once this check has been critical this long.
    deregister_critical_after_s: float | None = None
    #: Initial status (Consul starts checks critical when this is not given).
    status: CheckStatus | None = None

    def to_json(self) -> dict[str, Any]:
        """The check definition inside a service registration body."""
        out: dict[str, Any] = {
            "CheckID": self.check_id,
            "Name": self.name,
            "TTL": go_duration(self.ttl_s),
        }
        if self.status is not None:
            out["Status"] = self.status
        if self.notes:
            out["Notes"] = self.notes
        if self.deregister_critical_after_s is not None:
            out["DeregisterCriticalServiceAfter"] = go_duration(self.deregister_critical_after_s)
        return out


@dataclass(frozen=True)
class ProxySpec:
    """The ``Proxy`` block of a ``connect-proxy`` registration."""

    destination_service_name: str
    destination_service_id: str
    local_service_address: str
    local_service_port: int

    def to_json(self) -> dict[str, Any]:
        """The ``Proxy`` object of the registration body."""
        return {
            "DestinationServiceName": self.destination_service_name,
            "DestinationServiceID": self.destination_service_id,
            "LocalServiceAddress": self.local_service_address,
            "LocalServicePort": self.local_service_port,
        }


@dataclass(frozen=True)
class ServiceRegistration:
    """One service instance to register with the local agent (``/v1/agent/service/register``)."""

    name: str
    service_id: str
    #: Empty means "the node's address" (Consul's rule).
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    #: ``None`` for a plain service, :data:`CONNECT_PROXY` for a sidecar.
    kind: str | None = None
    proxy: ProxySpec | None = None
    checks: tuple[TtlCheck, ...] = ()

    def with_check_status(self, status: CheckStatus) -> ServiceRegistration:
        """The same registration with every check starting as ``status``."""
        return replace(self, checks=tuple(replace(c, status=status) for c in self.checks))

    def to_json(self) -> dict[str, Any]:
        """The registration body, in Consul's spelling."""
        out: dict[str, Any] = {"Name": self.name, "ID": self.service_id, "Port": self.port}
        if self.address:
            out["Address"] = self.address
        if self.tags:
            out["Tags"] = list(self.tags)
        if self.meta:
            out["Meta"] = dict(self.meta)
        if self.kind:
            out["Kind"] = self.kind
        if self.proxy is not None:
            out["Proxy"] = self.proxy.to_json()
        if self.checks:
            out["Checks"] = [c.to_json() for c in self.checks]
        return out


# ----------------------------------------------------------------------------------------------
# Incoming: catalog and health
# ----------------------------------------------------------------------------------------------


def aggregate_status(statuses: tuple[str, ...] | list[str]) -> Status:
    """Consul's aggregate: the worst status wins (no checks at all means passing)."""
    worst: Status = "passing"
    for status in statuses:
        if _RANK.get(status, _RANK["critical"]) > _RANK[worst]:
            # An unknown status counts as critical: never route to what we can't read.
            worst = status if status in _RANK else "critical"  # type: ignore[assignment]
    return worst


@dataclass(frozen=True)
class CheckState:
    """One health check as the health endpoints report it."""

    check_id: str
    name: str
    status: str
    service_id: str = ""
    output: str = ""

    @property
    def is_maintenance(self) -> bool:
        """A synthetic check of node or service maintenance mode."""
        return self.check_id == _NODE_MAINT or self.check_id.startswith(_SERVICE_MAINT_PREFIX)


@dataclass(frozen=True)
class ServiceInstance:
    """The ``Service`` part of a health entry."""

    service_id: str
    name: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    kind: str = ""
    proxy: ProxySpec | None = None


@dataclass(frozen=True)
class HealthEntry:
    """One instance of a service with its node and every check that applies to it."""

    node: str
    node_address: str
    service: ServiceInstance
    checks: tuple[CheckState, ...] = ()
    #: The node's ``Meta`` (locality: its ``zone``).
    node_meta: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    @property
    def address(self) -> str:
        """Where to reach the instance: the service address, else the node's (Consul's rule)."""
        return self.service.address or self.node_address

    @property
    def status(self) -> Status:
        """Aggregate of the node and service checks; maintenance beats everything."""
        if any(c.is_maintenance for c in self.checks):
            return "maintenance"
        return aggregate_status([c.status for c in self.checks])


def parse_index(value: object) -> int:
    """The ``X-Consul-Index`` header value as an int (RegistryProtocolError when it isn't one)."""
    try:
        index = int(str(value))
    except ValueError as exc:
        raise RegistryProtocolError(f"bad X-Consul-Index {value!r}") from exc
    if index < 0:
        raise RegistryProtocolError(f"bad X-Consul-Index {value!r}")
    return index


def parse_catalog_services(body: object) -> dict[str, tuple[str, ...]]:
    """``GET /v1/catalog/services`` body -> ``{service name: tags}``."""
    if not isinstance(body, dict):
        raise RegistryProtocolError(f"catalog services: expected an object, got {_kind(body)}")
    out: dict[str, tuple[str, ...]] = {}
    for name, tags in body.items():
        if not isinstance(name, str) or not isinstance(tags, list | None):
            raise RegistryProtocolError(f"catalog services: bad entry {name!r}: {tags!r}")
        out[name] = tuple(str(t) for t in tags or ())
    return out


def parse_health_entries(body: object) -> tuple[HealthEntry, ...]:
    """``GET /v1/health/service/<name>`` body -> entries (RegistryProtocolError if malformed)."""
    if body is None:
        return ()
    if not isinstance(body, list):
        raise RegistryProtocolError(f"health service: expected a list, got {_kind(body)}")
    try:
        return tuple(_entry(item) for item in body)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RegistryProtocolError(f"health service: malformed entry: {exc!r}") from exc


def _entry(item: dict[str, Any]) -> HealthEntry:
    node = item["Node"]
    svc = item["Service"]
    proxy = None
    raw_proxy = svc.get("Proxy") or {}
    if raw_proxy.get("DestinationServiceName"):
        proxy = ProxySpec(
            destination_service_name=str(raw_proxy["DestinationServiceName"]),
            destination_service_id=str(raw_proxy.get("DestinationServiceID") or ""),
            local_service_address=str(raw_proxy.get("LocalServiceAddress") or ""),
            local_service_port=int(raw_proxy.get("LocalServicePort") or 0),
        )
    service = ServiceInstance(
        service_id=str(svc["ID"]),
        name=str(svc["Service"]),
        address=str(svc.get("Address") or ""),
        port=int(svc.get("Port") or 0),
        tags=tuple(str(t) for t in svc.get("Tags") or ()),
        meta=MappingProxyType({str(k): str(v) for k, v in (svc.get("Meta") or {}).items()}),
        kind=str(svc.get("Kind") or ""),
        proxy=proxy,
    )
    checks = tuple(
        CheckState(
            check_id=str(c["CheckID"]),
            name=str(c.get("Name") or ""),
            status=str(c["Status"]),
            service_id=str(c.get("ServiceID") or ""),
            output=str(c.get("Output") or ""),
        )
        for c in item.get("Checks") or ()
    )
    return HealthEntry(
        node=str(node["Node"]),
        node_address=str(node.get("Address") or ""),
        service=service,
        checks=checks,
        node_meta=MappingProxyType({str(k): str(v) for k, v in (node.get("Meta") or {}).items()}),
    )


# ----------------------------------------------------------------------------------------------
# Incoming: key/value store
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KvEntry:
    """One key of the KV store, its value and indexes (``modify_index`` is the CAS token)."""

    key: str
    value: bytes
    modify_index: int
    create_index: int


def parse_kv_entries(body: object) -> tuple[KvEntry, ...]:
    """Entries of ``GET /v1/kv/<key>`` as py-consul returns them (``Value`` already base64
    decoded; ``None`` for a missing key or empty prefix) -> :class:`KvEntry` values."""
    if body is None:
        return ()
    items: list[Any] = body if isinstance(body, list) else [body]
    try:
        return tuple(_kv_entry(item) for item in items)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RegistryProtocolError(f"kv: malformed entry: {exc!r}") from exc


def _kv_entry(item: dict[str, Any]) -> KvEntry:
    value = item.get("Value")
    if value is None:
        value = b""
    elif isinstance(value, str):
        value = value.encode()
    elif not isinstance(value, bytes):
        raise TypeError(f"value of {item.get('Key')!r} is a {_kind(value)}")
    return KvEntry(
        key=str(item["Key"]),
        value=value,
        modify_index=int(item["ModifyIndex"]),
        create_index=int(item["CreateIndex"]),
    )


def _kind(value: object) -> str:
    return type(value).__name__
