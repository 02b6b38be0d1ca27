"""Request JSON keys, read the way Consul reads them.

Consul decodes request bodies case-insensitively and accepts snake_case aliases
(``service_id``, ``enable_tag_override``, ``sidecar_service``...). :func:`normalize` rewrites
every known key to its canonical CamelCase spelling, recursively, but leaves user-defined maps
alone: the keys of ``Meta``/``NodeMeta``/``Header``/``Config`` and the names in
``TaggedAddresses`` are data, not field names.
"""

from __future__ import annotations

from typing import Any

__all__ = ["normalize"]

_CANONICAL = (
    "ID",
    "Node",
    "Address",
    "Datacenter",
    "TaggedAddresses",
    "NodeMeta",
    "Meta",
    "Service",
    "Services",
    "Check",
    "Checks",
    "SkipNodeUpdate",
    "Name",
    "Tags",
    "Port",
    "Kind",
    "Proxy",
    "Connect",
    "Weights",
    "Passing",
    "Warning",
    "EnableTagOverride",
    "SocketPath",
    "Locality",
    "Region",
    "Zone",
    "CheckID",
    "Notes",
    "Status",
    "Output",
    "ServiceID",
    "ServiceName",
    "ServiceTags",
    "Definition",
    "Interval",
    "Timeout",
    "TTL",
    "HTTP",
    "Method",
    "Header",
    "Body",
    "TLSServerName",
    "TLSSkipVerify",
    "TCP",
    "TCPUseTLS",
    "UDP",
    "GRPC",
    "GRPCUseTLS",
    "H2PING",
    "H2PingUseTLS",
    "Args",
    "ScriptArgs",
    "DockerContainerID",
    "Shell",
    "OSService",
    "AliasNode",
    "AliasService",
    "DeregisterCriticalServiceAfter",
    "SuccessBeforePassing",
    "FailuresBeforeWarning",
    "FailuresBeforeCritical",
    "OutputMaxSize",
    "Type",
    "DisableRedirects",
    "Native",
    "SidecarService",
    "DestinationServiceName",
    "DestinationServiceID",
    "LocalServiceAddress",
    "LocalServicePort",
    "LocalServiceSocketPath",
    "Mode",
    "Config",
    "Upstreams",
    "DestinationType",
    "DestinationNamespace",
    "DestinationPartition",
    "DestinationPeer",
    "LocalBindAddress",
    "LocalBindPort",
    "LocalBindSocketPath",
    "LocalBindSocketMode",
    "MeshGateway",
    "Expose",
    "TransparentProxy",
    "AccessLogs",
    "EnvoyExtensions",
    "Paths",
    "Path",
    "ListenerPort",
    "Protocol",
    "OutboundListenerPort",
    "DialedDirectly",
    "CentrallyConfigured",
    "Token",
    "WriteRequest",
    "LockDelay",
    "Behavior",
    "NodeChecks",
    "ServiceChecks",
    "Namespace",
    "Partition",
    "Flags",
    "Value",
    "Verb",
    "Key",
    "Index",
    "Session",
    "Coord",
    "Segment",
    "Vec",
    "Error",
    "Adjustment",
    "Height",
    "Reason",
    "Enable",
    "Payload",
    "ServiceFilter",
    "NodeFilter",
    "TagFilter",
    "Version",
    "LTime",
    "ExposedPort",
    "DestinationName",
    "Datacenters",
)

_ALIASES = {name.lower(): name for name in _CANONICAL}
# Go's mapstructure also matches these older spellings.
_ALIASES.update(
    {
        "script": "Script",
        "serviceid": "ServiceID",
        "checkid": "CheckID",
        "deregistercriticalserviceafter": "DeregisterCriticalServiceAfter",
        "sidecarservice": "SidecarService",
    }
)

# Values kept verbatim: their keys are user data.
_OPAQUE = frozenset({"Meta", "NodeMeta", "Header", "Config", "Value", "Payload", "Definition"})
# Maps whose keys are user data but whose values are structs.
_KEYED = frozenset({"TaggedAddresses"})


def _canon(key: str) -> str:
    return _ALIASES.get(key.replace("_", "").replace("-", "").lower(), key)


def normalize(value: Any) -> Any:
    """A copy of ``value`` with every known object key in Consul's canonical spelling."""
    if isinstance(value, list):
        return [normalize(item) for item in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = _canon(key) if isinstance(key, str) else key
        if name in _OPAQUE:
            out[name] = item
        elif name in _KEYED and isinstance(item, dict):
            out[name] = {k: normalize(v) for k, v in item.items()}
        else:
            out[name] = normalize(item)
    return out
