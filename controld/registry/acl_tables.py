"""The registry's ACL objects in memory: tokens by accessor (and secret), policies, roles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controld.registry.acl_model import Policy, Role, Token
from controld.registry.model import from_record

__all__ = ["AclObject", "AclTables"]

AclObject = Token | Policy | Role
_KINDS: dict[str, type[Token] | type[Policy] | type[Role]] = {
    "token": Token,
    "policy": Policy,
    "role": Role,
}


def kind_of(obj: AclObject) -> str:
    """``token``, ``policy`` or ``role``."""
    return "token" if isinstance(obj, Token) else "policy" if isinstance(obj, Policy) else "role"


def id_of(obj: AclObject) -> str:
    """The object's ID (a token's AccessorID)."""
    return obj.accessor_id if isinstance(obj, Token) else obj.id


@dataclass
class AclTables:
    """Every ACL object, indexed the ways the endpoints look them up."""

    tokens: dict[str, Token] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    policies: dict[str, Policy] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)

    def load(self, records: list[tuple[str, dict[str, Any]]]) -> None:
        """Fill from the persisted records."""
        for kind, record in records:
            cls = _KINDS.get(kind)
            if cls is not None:
                self.put(from_record(cls, record))

    def put(self, obj: AclObject) -> None:
        """Insert or replace ``obj``."""
        if isinstance(obj, Token):
            old = self.tokens.get(obj.accessor_id)
            if old is not None:
                self.secrets.pop(old.secret_id, None)
            self.tokens[obj.accessor_id] = obj
            self.secrets[obj.secret_id] = obj.accessor_id
        elif isinstance(obj, Policy):
            self.policies[obj.id] = obj
        else:
            self.roles[obj.id] = obj

    def get(self, kind: str, object_id: str) -> AclObject | None:
        """The object of ``kind`` with ``object_id``, or None."""
        if kind == "token":
            return self.tokens.get(object_id)
        if kind == "policy":
            return self.policies.get(object_id)
        return self.roles.get(object_id)

    def remove(self, kind: str, object_id: str) -> AclObject | None:
        """Remove and return the object (None if it didn't exist)."""
        if kind == "token":
            token = self.tokens.pop(object_id, None)
            if token is not None:
                self.secrets.pop(token.secret_id, None)
            return token
        if kind == "policy":
            return self.policies.pop(object_id, None)
        return self.roles.pop(object_id, None)

    def by_secret(self, secret: str) -> Token | None:
        """The token with SecretID ``secret``."""
        accessor = self.secrets.get(secret)
        return self.tokens.get(accessor) if accessor is not None else None

    def policy_by_name(self, name: str) -> Policy | None:
        """The policy named ``name``."""
        return next((p for p in self.policies.values() if p.name == name), None)

    def role_by_name(self, name: str) -> Role | None:
        """The role named ``name``."""
        return next((r for r in self.roles.values() if r.name == name), None)
