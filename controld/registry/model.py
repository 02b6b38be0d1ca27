"""The registry's entities: immutable values, replaced as a whole on every change.

Field names follow Consul's structs (``structs.Node``, ``structs.ServiceNode``,
``structs.HealthCheck``, ``structs.DirEntry``, ``structs.Session``); the JSON shapes are built
in :mod:`controld.registry.render`. ``to_record``/``from_record`` are the persisted form.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

__all__ = [
    "CRITICAL",
    "PASSING",
    "STATUSES",
    "WARNING",
    "Check",
    "CheckSpec",
    "KVEntry",
    "Node",
    "Service",
    "Session",
    "from_record",
    "replace",
    "to_record",
]

PASSING = "passing"
WARNING = "warning"
CRITICAL = "critical"
MAINTENANCE = "maintenance"
STATUSES = (PASSING, WARNING, CRITICAL)

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Node:
    """A catalog node."""

    name: str
    id: str = ""
    address: str = ""
    tagged_addresses: Json = field(default_factory=dict)
    meta: Json = field(default_factory=dict)
    create_index: int = 0
    modify_index: int = 0


@dataclass(frozen=True, slots=True)
class Service:
    """A service instance on a node (Consul's ``NodeService``)."""

    node: str
    id: str
    name: str
    tags: tuple[str, ...] = ()
    address: str = ""
    port: int = 0
    meta: Json = field(default_factory=dict)
    tagged_addresses: Json = field(default_factory=dict)
    weights: Json = field(default_factory=lambda: {"Passing": 1, "Warning": 1})
    enable_tag_override: bool = False
    kind: str = ""
    proxy: Json | None = None
    connect: Json | None = None
    socket_path: str = ""
    locality: Json | None = None
    # Registered through this agent's API (shown by /v1/agent/services).
    local: bool = False
    # ID of the service whose Connect.SidecarService registered this one.
    sidecar_of: str = ""
    create_index: int = 0
    modify_index: int = 0


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """How the agent runs a check (the parts of Consul's ``CheckType`` it acts on)."""

    kind: str = ""  # "ttl", "http", "tcp", "script", "alias", "grpc", "docker", ... or ""
    ttl: float = 0.0
    http: str = ""
    method: str = "GET"
    header: Json = field(default_factory=dict)
    body: str = ""
    tls_skip_verify: bool = False
    disable_redirects: bool = False
    tcp: str = ""
    args: tuple[str, ...] = ()
    alias_service: str = ""
    alias_node: str = ""
    target: str = ""  # grpc / docker / udp / h2ping / os_service target (not run)
    interval: float = 0.0
    timeout: float = 10.0
    deregister_after: float = 0.0
    output_max_size: int = 4096


@dataclass(frozen=True, slots=True)
class Check:
    """A health check (Consul's ``HealthCheck``)."""

    node: str
    check_id: str
    name: str
    status: str = CRITICAL
    notes: str = ""
    output: str = ""
    service_id: str = ""
    service_name: str = ""
    service_tags: tuple[str, ...] = ()
    type: str = ""
    interval: str = ""
    timeout: str = ""
    definition: Json = field(default_factory=dict)
    spec: CheckSpec | None = None
    local: bool = False
    create_index: int = 0
    modify_index: int = 0


@dataclass(frozen=True, slots=True)
class KVEntry:
    """A key/value entry (Consul's ``DirEntry``)."""

    key: str
    value: bytes | None = None
    flags: int = 0
    session: str = ""
    lock_index: int = 0
    create_index: int = 0
    modify_index: int = 0


@dataclass(frozen=True, slots=True)
class Session:
    """A session (Consul's ``Session``); ``lock_delay`` and ``ttl`` in seconds."""

    id: str
    name: str = ""
    node: str = ""
    node_checks: tuple[str, ...] = ()
    service_checks: tuple[str, ...] = ()
    lock_delay: float = 15.0
    behavior: str = "release"
    ttl: float = 0.0
    create_index: int = 0
    modify_index: int = 0


T = TypeVar("T")


def to_record(value: object) -> Json:
    """The JSON-able persisted form of an entity (tuples become lists; ``value`` bytes dropped)."""
    record = asdict(value)  # type: ignore[call-overload]
    record.pop("value", None)
    return dict(record)


def from_record(cls: type[T], record: Json) -> T:
    """Rebuild an entity from :func:`to_record` output (unknown keys ignored)."""
    kwargs: Json = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in record:
            continue
        item = record[f.name]
        if f.name == "spec" and isinstance(item, dict):
            spec = from_record(CheckSpec, item)
            kwargs[f.name] = spec
            continue
        if isinstance(item, list):
            item = tuple(item)
        kwargs[f.name] = item
    return cls(**kwargs)
