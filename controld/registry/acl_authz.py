"""The authorizer: what one token may do, from the rules of everything it links to.

Precedence follows Consul: for a name, an exact rule (``service "web"``) beats every prefix
rule; among prefix rules the longest matching prefix wins; rules of the same resource and
segment from several policies merge with deny over write over list over read. Without any
matching rule the default policy applies, which is deny. Service identities grant
``service "<name>"`` and ``service "<name>-sidecar-proxy"`` write plus ``service_prefix ""``
and ``node_prefix ""`` read; node identities grant ``node "<name>"`` write and
``service_prefix ""`` read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from controld.registry.acl_rules import Rules, merge_disposition

__all__ = ["MANAGEMENT", "Authorizer", "identity_rules", "instance_visible"]


def identity_rules(
    service_identities: Iterable[dict[str, Any]],
    node_identities: Iterable[dict[str, Any]],
    datacenter: str,
) -> Rules:
    """The rules Consul synthesizes for service and node identities valid in ``datacenter``."""
    rules = Rules()
    seg = rules.segments
    for ident in service_identities:
        dcs = ident.get("Datacenters") or []
        if dcs and datacenter not in dcs:
            continue
        name = str(ident.get("ServiceName", ""))
        seg.setdefault("service", {})[name] = "write"
        seg["service"][f"{name}-sidecar-proxy"] = "write"
        seg.setdefault("service_prefix", {})[""] = "read"
        seg.setdefault("node_prefix", {})[""] = "read"
    for ident in node_identities:
        if ident.get("Datacenter") not in ("", None, datacenter):
            continue
        seg.setdefault("node", {})[str(ident.get("NodeName", ""))] = "write"
        seg.setdefault("service_prefix", {})[""] = "read"
    return rules


class Authorizer:
    """Decisions for one token (``management``: everything allowed)."""

    def __init__(
        self, rules: Iterable[Rules] = (), *, management: bool = False, key: str = ""
    ) -> None:
        self.management = management
        #: Tells cached renderings of one token's filtered reads apart from another's.
        self.key = key
        self._seg: dict[str, dict[str, str]] = {}
        self._flat: dict[str, str] = {}
        for rule in rules:
            for resource, by_segment in rule.segments.items():
                mine = self._seg.setdefault(resource, {})
                for segment, disposition in by_segment.items():
                    mine[segment] = merge_disposition(mine.get(segment), disposition)
            for resource, disposition in rule.flat.items():
                self._flat[resource] = merge_disposition(self._flat.get(resource), disposition)
        # Longest prefix first, so the first match is the winner.
        self._prefixes = {
            resource: sorted(by_segment.items(), key=lambda item: -len(item[0]))
            for resource, by_segment in self._seg.items()
            if resource.endswith("_prefix")
        }

    # -- the lookup ------------------------------------------------------------------------
    def _disposition(self, resource: str, name: str) -> str | None:
        exact = self._seg.get(resource, {}).get(name)
        if exact is not None:
            return exact
        for prefix, disposition in self._prefixes.get(resource + "_prefix", ()):
            if name.startswith(prefix):
                return disposition
        return None

    def _allows(self, resource: str, name: str, need: str) -> bool:
        if self.management:
            return True
        disposition = self._disposition(resource, name)
        if need == "read":
            return disposition in ("read", "write")
        if need == "list":
            return disposition in ("read", "write", "list")
        return disposition == "write"

    def _flat_allows(self, resource: str, need: str) -> bool:
        if self.management:
            return True
        disposition = self._flat.get(resource)
        if need == "read":
            return disposition in ("read", "write")
        return disposition == "write"

    # -- per resource ----------------------------------------------------------------------
    def service_read(self, name: str) -> bool:
        """``service:read`` on ``name``."""
        return self._allows("service", name, "read")

    def service_write(self, name: str) -> bool:
        """``service:write`` on ``name``."""
        return self._allows("service", name, "write")

    def node_read(self, name: str) -> bool:
        """``node:read`` on ``name``."""
        return self._allows("node", name, "read")

    def node_write(self, name: str) -> bool:
        """``node:write`` on ``name``."""
        return self._allows("node", name, "write")

    def key_read(self, key: str) -> bool:
        """``key:read`` on ``key``."""
        return self._allows("key", key, "read")

    def key_list(self, key: str) -> bool:
        """``key:list`` (or read) on ``key``: its name may be listed."""
        return self._allows("key", key, "list")

    def key_write(self, key: str) -> bool:
        """``key:write`` on ``key``."""
        return self._allows("key", key, "write")

    def key_write_prefix(self, prefix: str) -> bool:
        """Write on ``prefix`` and on every rule under it (a recursive delete, Consul's
        ``KeyWritePrefix``): one denied or read-only key below refuses the whole prefix."""
        if self.management:
            return True
        if not self.key_write(prefix):
            return False
        for resource in ("key", "key_prefix"):
            for segment, disposition in self._seg.get(resource, {}).items():
                if segment.startswith(prefix) and disposition != "write":
                    return False
        return True

    def agent_read(self, node: str) -> bool:
        """``agent:read`` on ``node``."""
        return self._allows("agent", node, "read")

    def agent_write(self, node: str) -> bool:
        """``agent:write`` on ``node``."""
        return self._allows("agent", node, "write")

    def session_read(self, node: str) -> bool:
        """``session:read`` on sessions of ``node``."""
        return self._allows("session", node, "read")

    def session_write(self, node: str) -> bool:
        """``session:write`` on sessions of ``node``."""
        return self._allows("session", node, "write")

    def event_read(self, name: str) -> bool:
        """``event:read`` on ``name``."""
        return self._allows("event", name, "read")

    def event_write(self, name: str) -> bool:
        """``event:write`` on ``name``."""
        return self._allows("event", name, "write")

    def acl_read(self) -> bool:
        """``acl = "read"`` (or write)."""
        return self._flat_allows("acl", "read")

    def acl_write(self) -> bool:
        """``acl = "write"``."""
        return self._flat_allows("acl", "write")

    def operator_read(self) -> bool:
        """``operator = "read"`` (or write)."""
        return self._flat_allows("operator", "read")

    def operator_write(self) -> bool:
        """``operator = "write"``."""
        return self._flat_allows("operator", "write")

    def keyring_read(self) -> bool:
        """``keyring = "read"`` (or write)."""
        return self._flat_allows("keyring", "read")

    def keyring_write(self) -> bool:
        """``keyring = "write"``."""
        return self._flat_allows("keyring", "write")


#: The authorizer of a management token (and of every request when ACLs are off).
MANAGEMENT = Authorizer(management=True)


class _Instance(Protocol):
    @property
    def node(self) -> str: ...
    @property
    def name(self) -> str: ...


def instance_visible(authz: Authorizer, svc: _Instance) -> bool:
    """A service instance is readable with service:read on its name and node:read on its node."""
    return authz.service_read(svc.name) and authz.node_read(svc.node)
