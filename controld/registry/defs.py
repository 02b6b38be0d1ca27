"""Request bodies (already key-normalized) turned into entities, validated as Consul does."""

from __future__ import annotations

import re
from typing import Any

from controld.registry.durations import format_duration, parse_duration
from controld.registry.errors import BadRequest
from controld.registry.model import STATUSES, CheckSpec

__all__ = [
    "as_bool",
    "as_int",
    "as_str",
    "as_str_map",
    "as_tags",
    "check_spec",
    "duration_field",
    "validate_meta",
    "weights",
]

Json = dict[str, Any]

_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")
MIN_INTERVAL = 1.0  # Consul's checks.MinInterval


def as_str(body: Json, key: str, default: str = "") -> str:
    """A string field (``None`` means absent)."""
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise BadRequest(f"Request decode failed: {key} must be a string")
    return value


def as_int(body: Json, key: str, default: int = 0) -> int:
    """An integer field (JSON numbers only, like Go's decoder)."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"Request decode failed: {key} must be a number")
    return int(value)


def as_bool(body: Json, key: str, default: bool = False) -> bool:
    """A boolean field."""
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"Request decode failed: {key} must be a boolean")
    return value


def as_tags(body: Json, key: str = "Tags") -> tuple[str, ...]:
    """A list of strings."""
    value = body.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise BadRequest(f"Request decode failed: {key} must be a list of strings")
    return tuple(value)


def as_str_map(body: Json, key: str) -> dict[str, str]:
    """A map of strings (``Meta``, node ``TaggedAddresses``)."""
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise BadRequest(f"Request decode failed: {key} must be a map of strings")
    return {str(k): v for k, v in value.items()}


def validate_meta(meta: dict[str, str], what: str = "Service") -> None:
    """Consul's ``ValidateMetadata`` limits, answered as 400 like the agent does."""
    problem = ""
    if len(meta) > 64:
        problem = "Node metadata cannot contain more than 64 key/value pairs"
    for key, value in meta.items():
        if not key:
            problem = "Key cannot be blank"
        elif not _META_KEY.match(key):
            problem = f"Key contains invalid characters: {key}"
        elif len(key) > 128:
            problem = f"Key is too long (limit: 128 characters): {key}"
        elif key.startswith("consul-"):
            problem = f"Key denied for metadata (reserved prefix 'consul-'): {key}"
        elif len(value) > 512:
            problem = f"Value is too long (limit: 512 characters): {key}"
        if problem:
            break
    if problem:
        raise BadRequest(f"Invalid {what} Meta: {problem}")


def weights(body: Json) -> Json:
    """``Weights``, defaulted to ``{"Passing": 1, "Warning": 1}`` and validated."""
    value = body.get("Weights")
    if value is None:
        return {"Passing": 1, "Warning": 1}
    if not isinstance(value, dict):
        raise BadRequest("Request decode failed: Weights must be an object")
    passing = as_int(value, "Passing", 0)
    warning = as_int(value, "Warning", 0)
    if passing < 1:
        raise BadRequest("Invalid Weights: Passing must be greater than 0")
    if warning < 0:
        raise BadRequest("Invalid Weights: Warning must be greater or equal than 0")
    return {"Passing": passing, "Warning": warning}


def duration_field(body: Json, key: str) -> float:
    """A Go duration: a string such as ``"10s"``, or a number of nanoseconds."""
    value = body.get(key)
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool):
        raise BadRequest(f"Request decode failed: {key}: invalid duration")
    if isinstance(value, int | float):
        return float(value) / 1e9
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise BadRequest(f"Request decode failed: {key}: {exc}") from exc
    raise BadRequest(f"Request decode failed: {key}: invalid duration")


def _status(body: Json) -> str:
    status = as_str(body, "Status")
    if status and status not in STATUSES:
        raise BadRequest(f"Invalid check status: {status!r}")
    return status


def check_spec(body: Json) -> tuple[CheckSpec, str, Json]:
    """Parse a ``CheckType``: the spec, the check's ``Type`` and its ``Definition``.

    Raises :class:`BadRequest` ("Invalid check: ...") as Consul's ``CheckType.Validate``.
    """
    _status(body)
    ttl = duration_field(body, "TTL")
    interval = duration_field(body, "Interval")
    timeout = duration_field(body, "Timeout")
    deregister = duration_field(body, "DeregisterCriticalServiceAfter")
    args = body.get("Args") or body.get("ScriptArgs") or ()
    if isinstance(body.get("Script"), str) and body["Script"]:
        args = ("sh", "-c", body["Script"])
    if not isinstance(args, list | tuple) or not all(isinstance(a, str) for a in args):
        raise BadRequest("Invalid check: Args must be a list of strings")
    kind = ""
    target = ""
    if as_str(body, "HTTP"):
        kind = "http"
    elif as_str(body, "TCP"):
        kind = "tcp"
    elif args:
        kind = "docker" if as_str(body, "DockerContainerID") else "script"
    elif as_str(body, "AliasService") or as_str(body, "AliasNode"):
        kind = "alias"
    else:
        for key, name in (
            ("GRPC", "grpc"),
            ("UDP", "udp"),
            ("H2PING", "h2ping"),
            ("OSService", "os_service"),
        ):
            if as_str(body, key):
                kind, target = name, as_str(body, key)
                break
    if not kind and ttl > 0:
        kind = "ttl"
    interval_kinds = ("http", "tcp", "script", "docker", "grpc", "udp", "h2ping", "os_service")
    if interval > 0 and ttl > 0:
        raise BadRequest("Invalid check: Interval and TTL cannot both be specified")
    if kind in interval_kinds and interval <= 0:
        raise BadRequest(
            "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP "
            "or OSService checks"
        )
    if kind == "alias" and ttl > 0:
        raise BadRequest("Invalid check: TTL must be not be set for Alias checks")
    if not kind:
        raise BadRequest("Invalid check: TTL must be > 0 for TTL checks")
    header = body.get("Header") or {}
    if not isinstance(header, dict):
        raise BadRequest("Invalid check: Header must be a map of string lists")
    spec = CheckSpec(
        kind=kind,
        ttl=ttl,
        http=as_str(body, "HTTP"),
        method=as_str(body, "Method") or "GET",
        header={
            str(k): [str(x) for x in (v if isinstance(v, list) else [v])] for k, v in header.items()
        },
        body=as_str(body, "Body"),
        tls_skip_verify=as_bool(body, "TLSSkipVerify"),
        disable_redirects=as_bool(body, "DisableRedirects"),
        tcp=as_str(body, "TCP"),
        args=tuple(args),
        alias_service=as_str(body, "AliasService"),
        alias_node=as_str(body, "AliasNode"),
        target=target,
        interval=max(interval, MIN_INTERVAL) if kind in interval_kinds else interval,
        timeout=timeout if timeout > 0 else 10.0,
        deregister_after=deregister,
        output_max_size=as_int(body, "OutputMaxSize", 4096) or 4096,
    )
    definition: Json = {}
    if spec.http:
        definition.update({"HTTP": spec.http, "Method": spec.method, "Header": spec.header})
    if spec.tcp:
        definition["TCP"] = spec.tcp
    if interval > 0:
        definition["Interval"] = format_duration(interval)
    if timeout > 0:
        definition["Timeout"] = format_duration(timeout)
    if deregister > 0:
        definition["DeregisterCriticalServiceAfter"] = format_duration(deregister)
    return spec, kind, definition


def initial_status(body: Json) -> str:
    """The ``Status`` a new check starts with: the one given, else critical."""
    return _status(body) or "critical"
