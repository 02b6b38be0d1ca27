"""Client side of service discovery: a typed, Trio-friendly wrapper over py-consul.

:class:`meshcore.registry.client.RegistryClient` talks to any Consul-compatible registry
(controld's embedded one, or a real Consul agent); this package's top level holds the values it
sends and returns, its errors and the reconnect backoff. The client itself is imported from
``meshcore.registry.client`` explicitly: importing py-consul (and requests) costs a daemon
~150 ms of start-up, which only the processes that talk to a registry should pay.
"""

from meshcore.registry.backoff import Backoff
from meshcore.registry.errors import (
    RegistryError,
    RegistryNotFound,
    RegistryPermissionDenied,
    RegistryProtocolError,
    RegistryRequestError,
    RegistryUnavailable,
)
from meshcore.registry.model import (
    CONNECT_PROXY,
    SIDECAR_META_KEY,
    CheckState,
    CheckStatus,
    HealthEntry,
    ProxySpec,
    ServiceInstance,
    ServiceRegistration,
    Status,
    TtlCheck,
    aggregate_status,
    go_duration,
    parse_catalog_services,
    parse_health_entries,
    parse_index,
)

__all__ = [
    "CONNECT_PROXY",
    "SIDECAR_META_KEY",
    "Backoff",
    "CheckState",
    "CheckStatus",
    "HealthEntry",
    "ProxySpec",
    "RegistryError",
    "RegistryNotFound",
    "RegistryPermissionDenied",
    "RegistryProtocolError",
    "RegistryRequestError",
    "RegistryUnavailable",
    "ServiceInstance",
    "ServiceRegistration",
    "Status",
    "TtlCheck",
    "aggregate_status",
    "go_duration",
    "parse_catalog_services",
    "parse_health_entries",
    "parse_index",
]
