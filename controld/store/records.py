"""What the store keeps in the KV, and how it is spelled.

Layout under a prefix (``meshd/`` by default)::

    <prefix>resources/<Kind>/<name>  {"resource": {...}, "revision": R, "author", "time"}
    <prefix>revision                 the revision counter, a decimal integer
    <prefix>history/<R, 12 digits>   {"revision", "author", "time", "action", "changes": [...]}

Everything here is pure: values in, values (or :class:`InvalidValue`) out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from meshcore.model.resources import Resource, parse_resource, resource_key

__all__ = [
    "ApplyResult",
    "Change",
    "ChangeAction",
    "InvalidValue",
    "KeyLayout",
    "RevisionRecord",
    "StoredResource",
    "decode_counter",
    "decode_history",
    "decode_stored",
    "encode_history",
    "encode_stored",
    "rfc3339",
]

#: What an apply or delete did to one resource.
ChangeAction = Literal["created", "updated", "deleted", "unchanged"]
_ACTIONS = ("created", "updated", "deleted", "unchanged")


class InvalidValue(ValueError):
    """A stored value that doesn't decode (reported, skipped, counted; never fatal)."""


def rfc3339(unix: float) -> str:
    """``2026-11-22T05:30:40.123Z`` for a ``time.time()`` value."""
    stamp = datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class KeyLayout:
    """The store's keys under ``prefix`` (a trailing ``/`` is added when missing)."""

    def __init__(self, prefix: str = "meshd/") -> None:
        if not prefix or prefix.startswith("/"):
            raise ValueError(f"store prefix must be non-empty and not start with '/': {prefix!r}")
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.resources = self.prefix + "resources/"
        self.revision = self.prefix + "revision"
        self.history = self.prefix + "history/"
        # "resources/..." and "revision" share this prefix and "history/" doesn't: one
        # recursive list reads the counter and every resource consistently, without dragging
        # the ever-growing history along.
        self.state = self.prefix + "re"

    def resource(self, kind: str, name: str) -> str:
        """Key of one resource."""
        return f"{self.resources}{kind}/{name}"

    def parse_resource(self, key: str) -> tuple[str, str] | None:
        """``(kind, name)`` of a resource key; ``None`` if ``key`` isn't one."""
        if not key.startswith(self.resources):
            return None
        kind, sep, name = key[len(self.resources) :].partition("/")
        if not sep or not kind or not name or "/" in name:
            return None
        return kind, name

    def history_record(self, revision: int) -> str:
        """Key of the history record of ``revision`` (zero-padded so keys sort by revision)."""
        return f"{self.history}{revision:012d}"


@dataclass(frozen=True)
class Change:
    """One resource an apply or delete touched (or left alone)."""

    kind: str
    name: str
    action: ChangeAction

    def as_json(self) -> dict[str, str]:
        """``{"kind", "name", "action"}``."""
        return {"kind": self.kind, "name": self.name, "action": self.action}


@dataclass(frozen=True)
class ApplyResult:
    """Outcome of an apply or delete: the revision now in force and what changed.

    When nothing changed, ``revision`` is the current one (no new revision was made) and
    every change is ``unchanged``.
    """

    revision: int
    changes: tuple[Change, ...]

    @property
    def changed(self) -> bool:
        """True if anything was (or, for a dry run, would be) written."""
        return any(c.action != "unchanged" for c in self.changes)

    def as_json(self) -> dict[str, Any]:
        """``{"revision", "changes": [...]}`` (the API's answer)."""
        return {"revision": self.revision, "changes": [c.as_json() for c in self.changes]}


@dataclass(frozen=True)
class StoredResource:
    """A resource as stored, with the revision, author and time of its last change."""

    resource: Resource
    revision: int
    author: str
    time: str

    def meta_json(self) -> dict[str, Any]:
        """``{"revision", "author", "time"}``."""
        return {"revision": self.revision, "author": self.author, "time": self.time}


@dataclass(frozen=True)
class RevisionRecord:
    """The audit record of one revision."""

    revision: int
    author: str
    time: str
    action: Literal["apply", "delete"]
    changes: tuple[Change, ...]

    def as_json(self) -> dict[str, Any]:
        """The record as stored (and as the API returns it)."""
        return {
            "revision": self.revision,
            "author": self.author,
            "time": self.time,
            "action": self.action,
            "changes": [c.as_json() for c in self.changes],
        }


def _dumps(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidValue(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidValue(f"expected a JSON object, got {type(value).__name__}")
    return value


def _field(obj: dict[str, Any], name: str, kind: type) -> Any:
    value = obj.get(name)
    # bool is an int; a revision of true is as broken as one of "1".
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidValue(f"{name!r} must be a {kind.__name__}")
    return value


def encode_stored(resource: Resource, *, revision: int, author: str, time: str) -> bytes:
    """The KV value of a resource."""
    return _dumps(
        {"resource": resource.to_json(), "revision": revision, "author": author, "time": time}
    )


def decode_stored(raw: bytes, key: tuple[str, str]) -> StoredResource:
    """A resource's KV value -> :class:`StoredResource` (:class:`InvalidValue` if broken,
    including a resource whose kind and name don't match the key it is stored under)."""
    obj = _object(raw)
    body = _field(obj, "resource", dict)
    try:
        resource = parse_resource(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        raise InvalidValue(f"resource {path}: {first['msg']}") from exc
    if resource_key(resource) != key:
        got = "/".join(resource_key(resource))
        raise InvalidValue(f"holds {got}, not {'/'.join(key)}")
    return StoredResource(
        resource=resource,
        revision=_field(obj, "revision", int),
        author=_field(obj, "author", str),
        time=_field(obj, "time", str),
    )


def decode_counter(raw: bytes) -> int:
    """The revision counter's value (:class:`InvalidValue` unless a non-negative integer)."""
    text = raw.decode("ascii", "replace").strip()
    if not text.isdigit():
        raise InvalidValue(f"revision counter is not a number: {text[:40]!r}")
    return int(text)


def encode_history(record: RevisionRecord) -> bytes:
    """The KV value of a history record."""
    return _dumps(record.as_json())


def decode_history(raw: bytes) -> RevisionRecord:
    """A history record's KV value -> :class:`RevisionRecord` (:class:`InvalidValue` if broken)."""
    obj = _object(raw)
    action = _field(obj, "action", str)
    if action not in ("apply", "delete"):
        raise InvalidValue(f"unknown action {action!r}")
    changes: list[Change] = []
    for item in _field(obj, "changes", list):
        if not isinstance(item, dict):
            raise InvalidValue("changes must be objects")
        change_action = _field(item, "action", str)
        if change_action not in _ACTIONS:
            raise InvalidValue(f"unknown change action {change_action!r}")
        changes.append(Change(_field(item, "kind", str), _field(item, "name", str), change_action))
    return RevisionRecord(
        revision=_field(obj, "revision", int),
        author=_field(obj, "author", str),
        time=_field(obj, "time", str),
        action=action,
        changes=tuple(changes),
    )
