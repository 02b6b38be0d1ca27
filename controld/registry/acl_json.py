"""Consul's JSON shapes of ACL objects: rendering them, and reading request bodies into them.

Bodies are read case-insensitively (``name`` and ``Name``; ``service_identities`` and
``ServiceIdentities``), as Consul decodes them. Links to policies and roles may name them by
``ID`` or ``Name``; they are stored by ID, so an unknown one is refused (400) when written.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any

from controld.registry.acl_model import Policy, Role, Token, parse_rfc3339, rfc3339
from controld.registry.acl_rules import RulesError, parse_rules
from controld.registry.acl_tables import AclTables
from controld.registry.durations import format_duration, parse_duration
from controld.registry.errors import BadRequest

__all__ = [
    "field",
    "policy_from_body",
    "policy_json",
    "role_from_body",
    "role_json",
    "token_from_body",
    "token_json",
]

Json = dict[str, Any]
# Consul's limits on a token's expiration (acl.token_min/max_expiration_ttl defaults).
MIN_TTL_S = 60.0
MAX_TTL_S = 24 * 3600.0
_SERVICE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,254}[a-z0-9])?$")
_POLICY_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")


def field(body: Json, name: str, default: Any = None) -> Any:
    """``body[name]`` matched case-insensitively, underscores ignored."""
    want = name.lower()
    for key, value in body.items():
        if isinstance(key, str) and key.replace("_", "").lower() == want:
            return value
    return default


def _str(body: Json, name: str) -> str:
    value = field(body, name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"Request decode failed: {name} must be a string")
    return value


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise BadRequest(f"Invalid {what}: {value!r} is not a UUID") from exc


def _links(acl: AclTables, body: Json, name: str, kind: str) -> tuple[str, ...]:
    raw = field(body, name) or []
    if not isinstance(raw, list):
        raise BadRequest(f"Request decode failed: {name} must be a list")
    out: list[str] = []
    for link in raw:
        if not isinstance(link, dict):
            raise BadRequest(f"Request decode failed: {name} entries must be objects")
        link_id, link_name = _str(link, "ID"), _str(link, "Name")
        if link_id:
            found = acl.policies.get(link_id) if kind == "policy" else acl.roles.get(link_id)
        else:
            found = (
                acl.policy_by_name(link_name) if kind == "policy" else acl.role_by_name(link_name)
            )
        if found is None:
            raise BadRequest(f"cannot find {kind} {link_id or link_name!r}")
        if found.id not in out:
            out.append(found.id)
    return tuple(out)


def _service_identities(body: Json) -> tuple[Json, ...]:
    raw = field(body, "ServiceIdentities") or []
    if not isinstance(raw, list):
        raise BadRequest("Request decode failed: ServiceIdentities must be a list")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise BadRequest("Request decode failed: ServiceIdentities entries must be objects")
        name = _str(item, "ServiceName")
        if not _SERVICE_NAME.match(name):
            raise BadRequest(f"Service identity {name!r} has an invalid name")
        dcs = field(item, "Datacenters") or []
        if not isinstance(dcs, list) or not all(isinstance(d, str) for d in dcs):
            raise BadRequest("Request decode failed: Datacenters must be a list of strings")
        entry: Json = {"ServiceName": name}
        if dcs:
            entry["Datacenters"] = dcs
        out.append(entry)
    return tuple(out)


def _node_identities(body: Json) -> tuple[Json, ...]:
    raw = field(body, "NodeIdentities") or []
    if not isinstance(raw, list):
        raise BadRequest("Request decode failed: NodeIdentities must be a list")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise BadRequest("Request decode failed: NodeIdentities entries must be objects")
        name, dc = _str(item, "NodeName"), _str(item, "Datacenter")
        if not name or not dc:
            raise BadRequest("Node identity is missing the node name or datacenter")
        out.append({"NodeName": name, "Datacenter": dc})
    return tuple(out)


def _expiration(body: Json, now: float) -> tuple[float | None, float]:
    ttl_text, time_text = _str(body, "ExpirationTTL"), _str(body, "ExpirationTime")
    if ttl_text and time_text:
        raise BadRequest("Expiration TTL and Expiration Time cannot both be set")
    if not ttl_text and not time_text:
        return None, 0.0
    try:
        ttl = parse_duration(ttl_text) if ttl_text else parse_rfc3339(time_text) - now
    except ValueError as exc:
        raise BadRequest(f"Invalid token expiration: {exc}") from exc
    if not MIN_TTL_S <= ttl <= MAX_TTL_S:
        raise BadRequest(
            "Token expiration TTL must be between 1m0s and 24h0m0s"
            if ttl_text
            else "ExpirationTime must be between 1m0s and 24h0m0s in the future"
        )
    return now + ttl, ttl if ttl_text else 0.0


def token_from_body(acl: AclTables, body: Json, now: float, old: Token | None) -> Token:
    """A token from a create (``old`` None) or update body; raises BadRequest."""
    accessor = _str(body, "AccessorID")
    secret = _str(body, "SecretID")
    if old is None:
        accessor = _uuid(accessor, "AccessorID") if accessor else str(uuid.uuid4())
        secret = _uuid(secret, "SecretID") if secret else str(uuid.uuid4())
        if accessor in acl.tokens:
            raise BadRequest("Invalid Token: AccessorID is already in use")
        if acl.by_secret(secret) is not None:
            raise BadRequest("Invalid Token: SecretID is already in use")
        expires, ttl = _expiration(body, now)
    else:
        if secret and secret != old.secret_id:
            raise BadRequest("Changing a token's SecretID is not permitted")
        secret = old.secret_id
        accessor = old.accessor_id
        if (field(body, "ExpirationTime") or field(body, "ExpirationTTL")) and (
            old.expiration_time is None
        ):
            raise BadRequest("Cannot change expiration time")
        expires, ttl = old.expiration_time, old.expiration_ttl
    local = field(body, "Local", False if old is None else old.local)
    if not isinstance(local, bool):
        raise BadRequest("Request decode failed: Local must be a boolean")
    if old is not None and local != old.local:
        raise BadRequest("Cannot toggle local mode of a token")
    return Token(
        accessor_id=accessor,
        secret_id=secret,
        description=_str(body, "Description"),
        policies=_links(acl, body, "Policies", "policy"),
        roles=_links(acl, body, "Roles", "role"),
        service_identities=_service_identities(body),
        node_identities=_node_identities(body),
        local=local,
        create_time=now if old is None else old.create_time,
        expiration_time=expires,
        expiration_ttl=ttl,
    )


def policy_from_body(body: Json, policy_id: str) -> Policy:
    """A policy from a create or update body; its rules must parse (400 naming the line)."""
    name = _str(body, "Name")
    if not _POLICY_NAME.match(name):
        raise BadRequest(f"Invalid Policy: invalid Name {name!r}")
    rules = _str(body, "Rules")
    try:
        parse_rules(rules)
    except RulesError as exc:
        raise BadRequest(f"Invalid Policy: failed to parse rules: {exc}") from exc
    dcs = field(body, "Datacenters") or []
    if not isinstance(dcs, list) or not all(isinstance(d, str) for d in dcs):
        raise BadRequest("Request decode failed: Datacenters must be a list of strings")
    return Policy(
        id=policy_id,
        name=name,
        description=_str(body, "Description"),
        rules=rules,
        datacenters=tuple(dcs),
    )


def role_from_body(acl: AclTables, body: Json, role_id: str) -> Role:
    """A role from a create or update body."""
    name = _str(body, "Name")
    if not _POLICY_NAME.match(name) or len(name) > 256:
        raise BadRequest(f"Invalid Role: invalid Name {name!r}")
    return Role(
        id=role_id,
        name=name,
        description=_str(body, "Description"),
        policies=_links(acl, body, "Policies", "policy"),
        service_identities=_service_identities(body),
        node_identities=_node_identities(body),
    )


def _link_json(acl: AclTables, ids: tuple[str, ...], kind: str) -> list[Json]:
    table: dict[str, Policy] | dict[str, Role] = acl.policies if kind == "policy" else acl.roles
    out = []
    for object_id in ids:
        found = table.get(object_id)
        if found is not None:
            out.append({"ID": found.id, "Name": found.name})
    return out


def _hash(parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:44]


def token_json(acl: AclTables, token: Token, *, show_secret: bool = True) -> Json:
    """A token as Consul renders it (empty lists left out, as Go's ``omitempty``)."""
    out: Json = {
        "AccessorID": token.accessor_id,
        "SecretID": token.secret_id if show_secret else "<hidden>",
        "Description": token.description,
    }
    policies = _link_json(acl, token.policies, "policy")
    roles = _link_json(acl, token.roles, "role")
    if policies:
        out["Policies"] = policies
    if roles:
        out["Roles"] = roles
    if token.service_identities:
        out["ServiceIdentities"] = list(token.service_identities)
    if token.node_identities:
        out["NodeIdentities"] = list(token.node_identities)
    out["Local"] = token.local
    if token.expiration_time is not None:
        out["ExpirationTime"] = rfc3339(token.expiration_time)
    if token.expiration_ttl:
        out["ExpirationTTL"] = format_duration(token.expiration_ttl)
    out["CreateTime"] = rfc3339(token.create_time)
    out["Hash"] = _hash((token.policies, token.roles, token.service_identities))
    out["CreateIndex"] = token.create_index
    out["ModifyIndex"] = token.modify_index
    return out


def policy_json(policy: Policy, *, stub: bool = False) -> Json:
    """A policy (``stub``: the list form, without ``Rules``)."""
    out: Json = {"ID": policy.id, "Name": policy.name, "Description": policy.description}
    if not stub:
        out["Rules"] = policy.rules
    if policy.datacenters:
        out["Datacenters"] = list(policy.datacenters)
    out["Hash"] = _hash((policy.name, policy.rules))
    out["CreateIndex"] = policy.create_index
    out["ModifyIndex"] = policy.modify_index
    return out


def role_json(acl: AclTables, role: Role) -> Json:
    """A role as Consul renders it."""
    out: Json = {"ID": role.id, "Name": role.name, "Description": role.description}
    policies = _link_json(acl, role.policies, "policy")
    if policies:
        out["Policies"] = policies
    if role.service_identities:
        out["ServiceIdentities"] = list(role.service_identities)
    if role.node_identities:
        out["NodeIdentities"] = list(role.node_identities)
    out["Hash"] = _hash((role.policies, role.service_identities))
    out["CreateIndex"] = role.create_index
    out["ModifyIndex"] = role.modify_index
    return out
