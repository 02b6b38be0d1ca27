"""ACL objects of the registry (tokens, policies, roles) as immutable values.

Links between them are kept by ID; names shown in links are looked up when rendered, so a
renamed policy shows its new name and a deleted one disappears, as in Consul. Times are Unix
seconds. ``to_record``/``from_record`` of :mod:`controld.registry.model` persist them.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ANONYMOUS_ACCESSOR",
    "MANAGEMENT_POLICY_ID",
    "Policy",
    "Role",
    "Token",
    "rfc3339",
]

MANAGEMENT_POLICY_ID = "00000000-0000-0000-0000-000000000001"
ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Policy:
    """A named set of rules (``Rules`` as given: HCL or JSON text)."""

    id: str
    name: str
    description: str = ""
    rules: str = ""
    datacenters: tuple[str, ...] = ()
    create_index: int = 0
    modify_index: int = 0


@dataclass(frozen=True, slots=True)
class Role:
    """A named set of policies and identities tokens can link to."""

    id: str
    name: str
    description: str = ""
    policies: tuple[str, ...] = ()
    service_identities: tuple[Json, ...] = ()
    node_identities: tuple[Json, ...] = ()
    create_index: int = 0
    modify_index: int = 0


@dataclass(frozen=True, slots=True)
class Token:
    """An ACL token; ``expiration_time`` is None for a token that never expires."""

    accessor_id: str
    secret_id: str
    description: str = ""
    policies: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    service_identities: tuple[Json, ...] = ()
    node_identities: tuple[Json, ...] = ()
    local: bool = False
    create_time: float = 0.0
    expiration_time: float | None = None
    expiration_ttl: float = 0.0
    create_index: int = 0
    modify_index: int = 0

    def expired(self, now: float) -> bool:
        """True once past its expiration time."""
        return self.expiration_time is not None and now >= self.expiration_time


def rfc3339(ts: float) -> str:
    """``ts`` as Consul writes times (RFC 3339, UTC, nanosecond precision trimmed)."""
    dt = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    return dt.isoformat().replace("+00:00", "Z")


def parse_rfc3339(text: str) -> float:
    """An RFC 3339 time as Unix seconds; raises ValueError."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    # Go writes up to 9 fractional digits; Python reads at most 6.
    head, dot, rest = value.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        rest = rest[: min(digits, 6)] + rest[digits:]
        value = f"{head}.{rest}"
    dt = datetime.datetime.fromisoformat(value)
    if dt.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone")
    return dt.timestamp()
